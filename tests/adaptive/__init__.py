"""Tests of commlib.adaptive (L-GreCo and Accordion)."""
