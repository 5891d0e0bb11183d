"""Code generated from proto/ by `make proto`: never edit it by hand."""
