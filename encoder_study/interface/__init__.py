"""The method on one's own data: ``fit``, ``load`` and ``Dictionary`` (``api``; the package
exposes them at its top), the SAELens disk layout (``saelens``) and the command-line trainer
(``cli``, run as ``python -m encoder_study.fit``)."""
