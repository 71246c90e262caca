"""What a face is, the similarity scale, settings and errors: imported by all of candor, importing none of it."""
