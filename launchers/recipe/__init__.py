"""A recipe resolved once (`load`), checked against files (`checks`), its numbers derived once (`plan`)."""
