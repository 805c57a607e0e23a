"""Fold-in: members' served feeds re-ranked between runs from their current data, and items
published since the run folded in (``services``)."""
