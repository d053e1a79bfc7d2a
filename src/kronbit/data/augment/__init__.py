"""TinyBERT data augmentation (Jiao et al. 2020, "TinyBERT: Distilling BERT for Natural Language
Understanding", Alg. 1): word replacement to multiply a GLUE training set for distillation.

For every training example, ``n_copies`` augmented copies are made; in each copy every replaceable
word is, with probability ``p_replace`` (TinyBERT: 0.4), replaced by one of its ``top_k``
(TinyBERT: 15) candidates drawn uniformly. Labels are kept (in distillation the teacher's soft
predictions on the copy are the real target anyway); pair tasks augment both sentences.

Where the candidates come from (a ``CandidateSource``):

* ``MaskedLMCandidates`` ("mlm"): TinyBERT's source for single-wordpiece words: the top-K
  predictions of a BERT MLM head at the word's position. As in TinyBERT the masked sentence is
  paired with the original one (``[CLS] masked [SEP] original [SEP]``), which keeps the predictions
  close to the original meaning. Needs a checkpoint that *has* an MLM head.
* ``EmbeddingNeighbourCandidates`` ("embedding"): nearest neighbours by cosine in the teacher's
  input word-embedding matrix, for single-wordpiece words. The packaged MiniLM has no MLM head,
  and this needs nothing but the teacher.
* ``WordNetCandidates`` ("wordnet"): WordNet synonyms, for any word. It stands in for TinyBERT's
  GloVe neighbours of multi-piece words (there is no GloVe here).
* ``CombinedCandidates``: several sources merged (round-robin, de-duplicated, capped at K), or
  ``combine: fallback``, TinyBERT's routing: the first source that has candidates for a word wins.

The default (``sources: null``) is MLM + WordNet when an MLM head is available, else embedding
neighbours + WordNet.

Deliberate differences from TinyBERT's script, each for a reason:
* Words are replaced *in place* in the original text (spans), not re-joined from lower-cased
  tokens, so an unchanged word keeps its case and spacing and ``p_replace=0`` returns the input.
* A candidate never equals the word itself (TinyBERT's MLM list may contain it), so
  ``p_replace`` is the probability that the word really changes.
* Pair tasks: each copy augments both sentences (TinyBERT loops over the sentences one after the
  other and, by mutating its row, leaves the last copy of the first sentence in the second loop).
* Stop words and anything that is not a purely alphabetic ASCII word of 2+ letters
  (punctuation, numbers, contractions such as ``n't``) are never replaced, and never inserted.
"""

from .apply import augment_examples, cache_key
from .config import STOP_WORDS, AugmentConfig, Slot, match_case, usable_candidate, word_spans
from .sources import (CandidateSource, CombinedCandidates, EmbeddingNeighbourCandidates, MaskedLMCandidates,
                      WordNetCandidates, build_source, check_available, has_mlm_architecture, load_masked_lm)

__all__ = ["AugmentConfig", "augment_examples", "cache_key", "build_source", "check_available", "CandidateSource",
           "CombinedCandidates", "EmbeddingNeighbourCandidates", "MaskedLMCandidates", "WordNetCandidates",
           "has_mlm_architecture", "load_masked_lm", "STOP_WORDS", "Slot", "match_case", "usable_candidate", "word_spans"]
