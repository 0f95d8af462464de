"""Approvals: calls under `approval_required` wait for the owner, bound to their exact arguments."""
