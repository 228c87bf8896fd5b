"""The `msgbatch` command-line client: submit, watch and fetch batches on any server that speaks the
Message Batches API (msgbatch or the hosted API), over plain HTTP with httpx."""
