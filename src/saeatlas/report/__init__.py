"""Results for people: terminal summaries now, the HTML atlas later."""
