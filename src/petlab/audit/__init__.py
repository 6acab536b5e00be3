"""``python -m petlab.audit``: what is wrong with the data a run would use, before a number is trusted.

Duplicates and leaks (perceptual hashes), likely label errors (out-of-sample probabilities of a k-fold
cross-validation, confident learning), outliers (blank pictures, extreme shapes, pictures unlike any other)
and, for the release's annotations, head boxes and trimaps that disagree. Each section is a CSV, contact
sheets and a part of ``report.md``; ``exclude.txt`` and ``relabel.csv`` are what the user edits or accepts
and gives back as ``data.exclude=`` / ``data.relabel=``.
"""
