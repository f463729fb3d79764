"""The configs that ship with oat (the bench presets among them), installed as ``oat.configs``."""
