"""Full fine-tuning (and PEFT) of selected CLTM cells."""
