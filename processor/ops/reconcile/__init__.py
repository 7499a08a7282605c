"""``voxline reconcile``: prove the delivery promise from what the broker and the store hold.

``accounting`` is the pure check (facts in, a ``Report`` out); ``gather`` reads the three
topics and lists the bucket, and turns each record into a fact; ``command`` is the click
command.
"""

from processor.ops.reconcile.accounting import Report
from processor.ops.reconcile.command import reconcile_command
from processor.ops.reconcile.gather import reconcile

__all__ = ["Report", "reconcile", "reconcile_command"]
