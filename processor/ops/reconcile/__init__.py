"""``voxline reconcile``: prove the delivery promise from what the broker and the store hold.

``accounting`` is the pure check (facts in, a ``Report`` out); ``gather`` reads the three
topics and lists the bucket, and turns each record into a fact; ``command`` is the click
command.
"""

from processor.events import DeadLetterRef
from processor.ops.reconcile.accounting import (
    Letter,
    Outcome,
    Report,
    RequestSeen,
    StoredObject,
    account,
    key_of_uri,
)
from processor.ops.reconcile.command import parse_since, reconcile_command, report_table
from processor.ops.reconcile.gather import (
    letter_of,
    list_objects,
    outcome_of,
    reconcile,
    request_seen,
)

__all__ = [
    "DeadLetterRef",
    "Letter",
    "Outcome",
    "Report",
    "RequestSeen",
    "StoredObject",
    "account",
    "key_of_uri",
    "letter_of",
    "list_objects",
    "outcome_of",
    "parse_since",
    "reconcile",
    "reconcile_command",
    "report_table",
    "request_seen",
]
