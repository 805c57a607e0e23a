"""Feed runs: what a run reads (``inputs``), how it trains, scores in shards and swaps in
(``services``), where its model goes (``artifacts``), how its rows are written (``store``,
``copytext``), and when runs happen (``schedule``)."""
