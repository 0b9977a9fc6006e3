"""The PERG Stream services; each module's ``build_app(settings, options)`` makes its worker."""

SERVICES = ("sink", "generator", "aligner", "judge")
"""Every service, in start-up order (the sink first: it owns the results file)."""
