"""Configs and run folders."""
