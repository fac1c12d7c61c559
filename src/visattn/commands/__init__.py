"""Implementations of the ``visattn`` subcommands (see ``visattn.cli``)."""
