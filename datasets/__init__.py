"""Realistic labeled agent traffic for callward: the generator, its incidents and labels."""
