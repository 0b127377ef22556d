"""The book's plumbing: the notebooks' parameters, figures and results record (``record``), the
data it reads (``data``: MNIST offline, the in-memory loader), files that are never read back
half-written (``storage``), argument checks (``validation``) and progress display (``progress``)."""
