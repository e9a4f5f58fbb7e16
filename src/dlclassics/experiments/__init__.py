"""One module per experiment; the file name is the experiment id with underscores."""
