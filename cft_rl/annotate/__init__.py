"""Critical-token annotation: the definition (rule), the fast engine and its branch decoding, the job, and its views."""
