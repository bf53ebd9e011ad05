"""Serving entry point: a Ray Serve application (``serve.app:build_app``) over registered models."""
