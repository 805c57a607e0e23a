from django.apps import AppConfig


class FeedsConfig(AppConfig):
    name = "feeds"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from feeds import schema  # noqa: F401 - registers the OpenAPI auth extension
        from feeds.receivers import recompute_after_ratification
        from governance.signals import policy_version_ratified

        policy_version_ratified.connect(
            recompute_after_ratification, dispatch_uid="feeds.recompute_after_ratification"
        )
