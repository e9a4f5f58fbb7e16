"""Datasets: file formats (one module per family), where files are found, and how they are checked."""
