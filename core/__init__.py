"""What every stage stands on: the error root and exit codes, logging set-up, atomic file I/O,
image-file names, the labelled grid, class lists, the shard format and the one seed rule.

`core` imports only the standard library, numpy and Pillow (never torch), so `preprocess`, which
must stay light, and `pipeline`, `launch` and `tools` all import it; it imports none of them.
"""
