"""Supervised fine-tuning and DPO of trained runs (docs/finetune.md)."""
