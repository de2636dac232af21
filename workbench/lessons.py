"""The Learn page's guided tour: the story of the MEMIT paper in five steps, as plain data.

Each step has a title, a short plain-language explanation (Markdown, no user text) and the
paper's equations for it (LaTeX, numbered as in Meng et al., 2023, "Mass-Editing Memory in a
Transformer"). The page (`pages/learn.py`) pairs each step with a live action on the model.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    key: str
    title: str
    text: str
    equations: tuple[tuple[str, str], ...]   # (caption, LaTeX)


STEPS = (
    Step(
        key="ask",
        title="1 · Ask the model a fact",
        text=(
            "A language model answers a fact like *(subject, relation, object)* by predicting the "
            "next word after a prompt such as *\u201cX plays the sport of\u201d*. The prediction is "
            "a softmax over the vocabulary, read from the last layer's hidden state at the last "
            "token. Each hidden state is the sum of everything written into the **residual "
            "stream** so far: the token embedding plus every attention and MLP output below it."
        ),
        equations=(
            ("Eq. 1 — the next-token distribution",
             r"P\left[x_{[t]} \mid x_{[1]},\dots,x_{[E]}\right] = "
             r"\operatorname{softmax}\left(W_y\, h^{D}_{[E]}\right)"),
            ("Eq. 2 — the residual stream",
             r"h^{l}_{[t]}(x) = h^{l-1}_{[t]}(x) + a^{l}_{[t]}(x) + m^{l}_{[t]}(x)"),
            ("Eq. 4 — an MLP layer",
             r"m^{l}_{[t]} = W^{l}_{out}\,\sigma\!\left(W^{l}_{in}\,\gamma\!\left(h^{l-1}_{[t]}\right)\right)"),
        ),
    ),
    Step(
        key="trace",
        title="2 · Trace where the fact lives",
        text=(
            "**Causal tracing** blurs the subject: Gaussian noise (3 × the embedding spread) is "
            "added to the subject tokens' embeddings, and the model's probability of the right "
            "answer drops. Then, one at a time, a single hidden state is put back to its clean "
            "value. Where restoring one state brings the answer back, that state carries the "
            "fact. The heatmap shows this *indirect effect* for every token and layer."
        ),
        equations=(
            ("Indirect effect of restoring state $h^l_{[t]}$",
             r"\mathrm{IE}(h^{l}_{[t]}) = P_{\text{corrupted},\ h^{l}_{[t]}\ \text{clean}}[o] "
             r"- P_{\text{corrupted}}[o]"),
        ),
    ),
    Step(
        key="layers",
        title="3 · See why those layers",
        text=(
            "The paper repeats the trace at the last subject token with that token's MLPs "
            "**frozen** in their corrupted state. Where the effect of a hidden state collapses "
            "once its MLPs cannot react, the MLPs are doing the work: the layers with the largest "
            "gap form the edit range **R**. Every MLP in R adds its share to the hidden state "
            "that later tokens read (Eq. 6), so MEMIT spreads a new memory across all of them."
        ),
        equations=(
            ("Eq. 6 — the hidden state at the last subject token, unrolled",
             r"h^{L}_{i} = h^{0}_{i} + \sum_{l=1}^{L} a^{l}_{i} + \sum_{l=1}^{L} m^{l}_{i}"),
        ),
    ),
    Step(
        key="edit",
        title="4 · Edit the fact",
        text=(
            "Each MLP output matrix $W_{out}$ is treated as a **linear associative memory** "
            "mapping keys $k$ (the subject, as the MLP sees it) to values $m$ (what to add to "
            "the stream). MEMIT first finds, by gradient descent, a hidden vector $z_i$ that "
            "makes the model say the new object (Eq. 16); then, layer by layer through R, it "
            "solves in closed form for the smallest change $\\Delta$ that stores its share of "
            "$z_i - h^L_i$ while keeping the old keys' outputs (covariance $C_0$) unchanged. "
            "How much of its share a layer really stores depends on how crowded its key space "
            "is: while the batch's keys are far apart (measured by $C_0$), almost all of it; as "
            "a batch grows towards the layer's width, less, and the rest leaks onto other "
            "subjects. The Results page shows this per edit (*stored*)."
        ),
        equations=(
            ("Eq. 16 — the target vector",
             r"z_i = h^{L}_{i} + \arg\min_{\delta_i} \frac{1}{P}\sum_{j=1}^{P} "
             r"-\log P_{G(h^{L}_{i} \mathrel{+}= \delta_i)}\left[o_i \mid x_j \oplus p(s_i, r_i)\right]"),
            ("Eq. 20 — each layer's share of the residual",
             r"r^{l}_{i} = \frac{z_i - h^{L}_{i}}{L - l + 1}"),
            ("Eqs. 14–15 — the batch update of one layer",
             r"\Delta = R\,K_1^{\top}\left(C_0 + K_1 K_1^{\top}\right)^{-1}, \qquad "
             r"C_0 = \lambda\,\mathbb{E}_k\left[k k^{\top}\right]"),
            ("What the update stores on the new keys (Woodbury identity)",
             r"\Delta K_1 = R\,M\left(I + M\right)^{-1}, \qquad M = K_1^{\top} C_0^{-1} K_1"),
        ),
    ),
    Step(
        key="test",
        title="5 · Test paraphrases and neighbours",
        text=(
            "A good edit **generalises** (paraphrases of the prompt give the new object) and is "
            "**specific** (other subjects keep their own facts). The paper counts a case as a "
            "success when the new object is more likely than the old one: Efficacy (the edit "
            "prompt), Paraphrase (rephrasings) and Neighbourhood (other subjects, where the old "
            "fact must still win). The Score is their harmonic mean."
        ),
        equations=(
            ("Efficacy success",
             r"\mathrm{ES} = \mathbb{E}_i\left[P_G[o_i \mid p(s_i, r_i)] > P_G[o^c_i \mid p(s_i, r_i)]\right]"),
            ("Score", r"S = \operatorname{HM}(\mathrm{ES}, \mathrm{PS}, \mathrm{NS})"),
        ),
    ),
)


def edited_model_note(n_applied: int) -> str:
    """What the tour says when the model already carries edits: every step reads the model as it
    is now, so a fact edited before (or pushed aside by another edit) traces and tests differently
    from the clean model the lesson text describes."""
    batches = f"{n_applied} edit batch{'es' if n_applied != 1 else ''}"
    return (f"The model carries {batches} already. Every step reads the model as it is now: a fact "
            "that an earlier edit changed, or pushed aside, answers, traces and tests differently "
            "from the unedited model the text describes. Undo the batches on the History page for "
            "a clean demonstration.")
