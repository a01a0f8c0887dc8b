"""What clients send and receive, one module per domain (fine-tuning's are in
app/finetune/schemas.py, beside the code that owns them). Table models never leave `app/`;
these classes are the API."""
