// The proposal editor: keeps the settings form (generated from the JSON Schema) and the JSON
// editor in step as either changes. Without this script the server applies changed settings
// when the form is saved (governance/schema_form.py), so the page works without it.
(function () {
  "use strict";

  function rawOf(input) {
    return input.type === "checkbox" ? (input.checked ? "true" : "false") : input.value;
  }

  function typed(input) {
    const raw = rawOf(input);
    const type = input.dataset.type;
    if (type === "boolean") return raw === "true";
    if (raw.trim() === "" && input.dataset.nullable === "true") return null;
    if (type === "integer" && /^-?\d+$/.test(raw.trim())) return parseInt(raw, 10);
    if (type === "number" && raw.trim() !== "" && !Number.isNaN(Number(raw))) return Number(raw);
    return raw; // the live check names the problem
  }

  function setup(form) {
    const editor = form.querySelector("#id_document");
    const inputs = form.querySelectorAll("[data-schema-path]");
    if (!editor || inputs.length === 0) return;
    const original = (input) => form.querySelector(
      'input[type=hidden][name="orig:' + input.dataset.schemaPath + '"]');

    inputs.forEach(function (input) {
      input.addEventListener("change", function () {
        let documentValue;
        try { documentValue = JSON.parse(editor.value); } catch (error) { return; }
        if (documentValue === null || typeof documentValue !== "object") return;
        const path = input.dataset.schemaPath.split(".");
        let node = documentValue;
        path.slice(0, -1).forEach(function (name) {
          if (node[name] === null || typeof node[name] !== "object") node[name] = {};
          node = node[name];
        });
        node[path[path.length - 1]] = typed(input);
        editor.value = JSON.stringify(documentValue, null, 2);
        // The JSON now holds the change: the server must not apply it a second time.
        original(input).value = rawOf(input);
        editor.dispatchEvent(new Event("input", { bubbles: true }));
      });
    });

    editor.addEventListener("input", function () {
      let documentValue;
      try { documentValue = JSON.parse(editor.value); } catch (error) { return; }
      inputs.forEach(function (input) {
        let value = documentValue;
        input.dataset.schemaPath.split(".").forEach(function (name) {
          value = value !== null && typeof value === "object" ? value[name] : undefined;
        });
        if (value === undefined) return;
        if (input.type === "checkbox") input.checked = value === true;
        else input.value = value === null ? "" : String(value);
        original(input).value = rawOf(input);
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form.proposal-form").forEach(setup);
  });
})();
