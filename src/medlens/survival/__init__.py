"""Prognosis: time-to-event (survival) models from images and clinical values."""
