"""The bundle format: a model as a self-describing folder (see :mod:`medlens.bundle.manifest`).

Each kind of model has its bundle class in its own package
(:class:`medlens.classify.bundle.ClassifierBundle`, ...); :func:`medlens.open_bundle`
(:mod:`medlens.kinds`) opens any of them.
"""
