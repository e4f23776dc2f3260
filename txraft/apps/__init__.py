"""Applications that ship with txraft (the key-value store) and the plain-Python pieces
any SQLite state machine shares."""
