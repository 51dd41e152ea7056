"""The prepare stage: tokenize, FIM, pack into a content-keyed Arrow cache (`stage.prepare`)."""
