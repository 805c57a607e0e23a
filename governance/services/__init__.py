"""Governance writes, one module per entity: audit, communities, versions, memberships,
proposals and ballots. Keyword-only, typed, one transaction each, audited in that transaction.
Import from here: this package is the room's public surface."""

from governance.services.audit import (
    ACTIONS,
    SYSTEM_ACTOR,
    audit_append,
    audit_append_locked,
    community_lock,
    community_lock_id,
    community_lock_key,
)
from governance.services.ballots import (
    ballot_cast,
    ballot_cast_id,
    ballot_member,
    ballot_receipt,
)
from governance.services.communities import (
    community_create,
    community_get_or_create,
)
from governance.services.memberships import (
    membership_create,
    membership_last_admin_check,
    membership_remove,
    membership_remove_check,
    membership_set_role,
)
from governance.services.proposals import (
    charter_validate,
    proposal_close,
    proposal_create,
    proposal_open,
    proposal_ratify,
    proposal_update,
    proposal_withdraw,
    proposals_close_due,
)
from governance.services.versions import (
    charter_version_create,
    charter_version_make_current,
    policy_version_create,
    policy_version_make_current,
)

__all__ = [
    "ACTIONS",
    "SYSTEM_ACTOR",
    "audit_append",
    "audit_append_locked",
    "ballot_cast",
    "ballot_cast_id",
    "ballot_member",
    "ballot_receipt",
    "charter_validate",
    "charter_version_create",
    "charter_version_make_current",
    "community_create",
    "community_get_or_create",
    "community_lock",
    "community_lock_id",
    "community_lock_key",
    "membership_create",
    "membership_last_admin_check",
    "membership_remove",
    "membership_remove_check",
    "membership_set_role",
    "policy_version_create",
    "policy_version_make_current",
    "proposal_close",
    "proposal_create",
    "proposal_open",
    "proposal_ratify",
    "proposal_update",
    "proposal_withdraw",
    "proposals_close_due",
]
