"""WebDataset-streaming LightningDataModules for every modality the Perceiver reads."""
