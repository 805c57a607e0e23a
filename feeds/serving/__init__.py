"""Serving feeds: the records cached for readers (``cache``), reading stored feeds with what is
refused now withdrawn (``selectors``), cursors, and the feed GETs cache-hit path (``feed_get``)."""
