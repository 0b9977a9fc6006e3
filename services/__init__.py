"""The PERG Stream services; each one's module (:func:`service_module`) has
``build_app(settings, options)``, which makes its worker."""

SERVICES = ("sink", "generator", "aligner", "judge")
"""Every service, in start-up order (the sink first: it owns the results file)."""


def service_module(name: str) -> str:
    """The module of service ``name``: the sink is a package (service, store, live side)."""
    return "services.sink.service" if name == "sink" else f"services.{name}"
