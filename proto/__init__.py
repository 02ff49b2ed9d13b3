"""Protocol buffers of the callward APIs and their generated Python stubs."""
