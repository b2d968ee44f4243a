"""Clothing classifiers from Trendyol: scrape product photos, clean them, fine-tune ResNet50 with fastai, serve the model

Modules:

- `trendyol_clf.clean`: Find every broken file, exact and near duplicate, cross-class conflict and (optionally) photo of a person in a scraped image folder, move them aside with a log, and put them back on demand
- `trendyol_clf.scale`: Sharded scraping on Dask with a lossless merge, the cleaner's hashing on the same cluster, and multi-process training through Hugging Face Accelerate inside fastai's `distrib_ctx`"""

__version__ = "0.0.1"
