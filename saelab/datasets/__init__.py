"""Raw text sources behind `saelab.data`, one module per source.

Each module turns one registry package (or files every Python install ships) into plain
Python lists; `saelab.data` splits them into a training corpus and held-out eval sets and
caches the results. Nothing here touches the network except `bigbench.sdist_path`.
"""
