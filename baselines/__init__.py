"""Baseline and peer methods; each module registers one method with @register_method."""
