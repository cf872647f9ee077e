"""Getting and building the MIT-BIH beat dataset (`heart fetch`)."""
