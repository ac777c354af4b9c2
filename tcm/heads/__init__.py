"""Detection heads (torch: `db`, `pan`, `fce`) and their target codecs (numpy: `db_codec`, `pan_codec`, `fce_codec`).

Nothing is imported here, so a CPU data worker that only needs a codec never loads the torch modules.
"""
