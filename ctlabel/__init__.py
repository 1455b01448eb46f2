"""ctlabel: trimaps and soft masks for the lesions of a slice store (commands arrive with the labelling issue)."""
