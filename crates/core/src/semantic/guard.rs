//! The lexical guard: the second opinion a semantic candidate needs after its cosine. Two
//! prompts pass only if their tokens agree, in order, once whitespace, sentence-final
//! punctuation, a sentence's first capital, contractions, omitted articles and fixed
//! politeness frames at the start or end are set aside. Every other symbol, every case
//! that is not a sentence's first letter, and every word used as content must match
//! exactly. It must never pass a pair because the two are "close": every allowance is a
//! rule a reader can check. Pure functions, no I/O.

use super::rewrite::{
    drop_articles, expand, fold_first_capital, move_leading_clause, order_alternatives,
    place_not_after_auxiliary, strip_politeness,
};
use super::tokens::{Kind, Word, lex};
use super::words::{MISSPELLINGS, NEGATIONS, NUMBER_WORDS, PROTECTED, PROTECTED_STEMS, SPELLINGS};

/// The default `max_typos`: none. A one-letter change can turn a word into another real
/// word or identifier ("readline" / "readlines", "county" / "country"), and the guard has
/// no dictionary to tell which, so nothing is forgiven unless asked.
pub const DEFAULT_MAX_TYPOS: usize = 0;
/// The default `typo_min_len`: a word shorter than this is never forgiven a typo.
pub const DEFAULT_TYPO_MIN_LEN: usize = 6;

/// The lexical guard a semantic candidate must pass besides its cosine (see "The lexical
/// guard" in docs/semantic.md for the rules). [`LexicalGuard::default`] is the measured
/// configuration; [`LexicalGuard::strict`] also keeps the politeness frames.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct LexicalGuard {
    max_typos: usize,
    typo_min_len: usize,
    synonyms: bool,
    politeness: bool,
    extra_function_words: Vec<String>,
    extra_protected: Vec<String>,
    extra_synonyms: Vec<(String, String)>,
}

impl Default for LexicalGuard {
    fn default() -> Self {
        LexicalGuard {
            max_typos: DEFAULT_MAX_TYPOS,
            typo_min_len: DEFAULT_TYPO_MIN_LEN,
            synonyms: true,
            politeness: true,
            extra_function_words: Vec::new(),
            extra_protected: Vec::new(),
            extra_synonyms: Vec::new(),
        }
    }
}

/// What the guard decided about two prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GuardVerdict {
    /// The same question: serve.
    Same,
    /// The same question but for this many one-letter typos: serve.
    Typos(usize),
    /// Another question: refuse.
    Refused(Refusal),
}

impl GuardVerdict {
    /// Whether the candidate may be served.
    pub fn passes(self) -> bool {
        !matches!(self, GuardVerdict::Refused(_))
    }
}

/// Why the guard refused a pair (the first that applies, in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The same words in another order.
    Order,
    /// A negation on one side only (or different negations).
    Negation,
    /// A number, symbol or identifier differs.
    Number,
    /// Other words differ (or the same words in another case).
    Words,
}

impl Refusal {
    /// A short lower-case name (`order`, `negation`, `number`, `words`).
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Order => "order",
            Refusal::Negation => "negation",
            Refusal::Number => "number",
            Refusal::Words => "words",
        }
    }
}

/// A prompt as the guard compares it: canonical tokens, each with the article it stood
/// after (if any) and whether it may be forgiven a typo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    words: Vec<Word>,
    /// Written in capitals only: its case says nothing.
    shouted: bool,
}

impl Canonical {
    /// The canonical tokens joined by single spaces (for logs and tests; the cache embeds
    /// the prompt as written).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for (i, w) in self.words.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(&w.text);
        }
        out
    }

    /// How many canonical tokens.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether nothing is left to compare.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }
}

impl LexicalGuard {
    /// The default guard (the measured configuration).
    pub fn new() -> Self {
        Self::default()
    }

    /// The tightest guard: no typos, no added synonyms, politeness frames kept.
    pub fn strict() -> Self {
        Self::default()
            .max_typos(0)
            .synonyms(false)
            .politeness(false)
    }

    crate::tiered::setters! {
        /// How many one-letter typos (substitution, insertion, deletion or swap of neighbours)
        /// a pair may hold and pass; 0 forgives none. Default 0: turn it on only if your
        /// traffic's words one letter apart are not other words or names of your domain (add
        /// those with [`protect`](Self::protect)).
        pub fn max_typos(n: usize) { max_typos = n }

        /// The shortest word that may be forgiven a typo (both words of the pair must be at least
        /// this long, start with the same letter, and be plain lower-case words). Default 6.
        pub fn typo_min_len(len: usize) { typo_min_len = len.max(2) }

        /// Whether the synonyms added with [`synonym`](Self::synonym) apply. Default true.
        /// There is no built-in synonym list (only British and American spellings of one word
        /// compare equal): hardly two words mean the same in every sense.
        pub fn synonyms(yes: bool) { synonyms = yes }

        /// Whether the fixed politeness frames are set aside: a greeting or aside followed by a
        /// comma or ending its sentence at the start ("Hi, ..."), thanks after a comma or as
        /// the last sentence ("..., thanks"), "could you (please)" before a request verb
        /// ("explain", "tell", ...), "tell me" / "do you know" before a question word. Default
        /// true.
        pub fn politeness(yes: bool) { politeness = yes }
    }

    /// More words to ignore wherever they stand (lower-case).
    pub fn function_words<I, S>(mut self, words: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.extra_function_words
            .extend(words.into_iter().map(|w| w.as_ref().to_lowercase()));
        self
    }

    /// More words never forgiven a typo (lower-case): names of your domain that sit one
    /// letter apart.
    pub fn protect<I, S>(mut self, words: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.extra_protected
            .extend(words.into_iter().map(|w| w.as_ref().to_lowercase()));
        self
    }

    /// One more synonym: `word` compares as `means` (both lower-case single words). Only
    /// for words that mean the same in every sense your traffic uses.
    pub fn synonym(mut self, word: &str, means: &str) -> Self {
        self.extra_synonyms
            .push((word.to_lowercase(), means.to_lowercase()));
        self
    }

    /// Decide whether two prompts ask the same question.
    pub fn check(&self, a: &str, b: &str) -> GuardVerdict {
        self.compare(&self.canonical(a), &self.canonical(b))
    }

    /// Decide on two canonical prompts.
    pub fn compare(&self, a: &Canonical, b: &Canonical) -> GuardVerdict {
        if a.words.is_empty() || b.words.is_empty() {
            return GuardVerdict::Refused(Refusal::Words);
        }
        if a.words.len() == b.words.len() {
            let mut typos = 0;
            let mut other = false;
            for (k, (x, y)) in a.words.iter().zip(&b.words).enumerate() {
                // An article may be omitted, never swapped, and never before a sentence's
                // last word: "what is the time" / "what is time", "I have a cold" / "I
                // have cold" ask other things.
                let last = |w: &[Word]| w.get(k + 1).is_none_or(|n| n.starts);
                let articles_agree = match (x.article, y.article) {
                    (Some(p), Some(q)) => p == q,
                    (None, None) => true,
                    _ => !last(&a.words) && !last(&b.words),
                };
                if !articles_agree {
                    other = true;
                    break;
                }
                if same_text(x, a.shouted, y, b.shouted) {
                    continue;
                }
                if a.shouted == b.shouted && self.forgivable(x, y) {
                    typos += 1;
                } else {
                    other = true;
                    break;
                }
            }
            if !other && typos == 0 {
                return GuardVerdict::Same;
            }
            if !other && typos <= self.max_typos {
                return GuardVerdict::Typos(typos);
            }
        }
        GuardVerdict::Refused(refusal(a, b))
    }

    fn forgivable(&self, x: &Word, y: &Word) -> bool {
        let ok = |w: &Word| {
            w.fuzzy
                && w.text.len() >= self.typo_min_len
                && !PROTECTED.contains(&w.text.as_str())
                && !self.extra_protected.contains(&w.text)
                && !PROTECTED_STEMS.iter().any(|s| w.text.starts_with(s))
        };
        self.max_typos > 0
            && ok(x)
            && ok(y)
            && x.text.as_bytes()[0] == y.text.as_bytes()[0]
            && one_edit_apart(x.text.as_bytes(), y.text.as_bytes())
    }

    /// The prompt as the guard compares it.
    pub fn canonical(&self, text: &str) -> Canonical {
        let (raw, shouted) = lex(text);
        let mut words: Vec<Word> = Vec::with_capacity(raw.len());
        for token in raw {
            self.push_word(token, shouted, &mut words);
        }
        drop_articles(&mut words);
        words.retain(|w| !(w.kind == Kind::Plain && self.extra_function_words.contains(&w.text)));
        if self.politeness {
            strip_politeness(&mut words);
        }
        place_not_after_auxiliary(&mut words);
        move_leading_clause(&mut words);
        order_alternatives(&mut words);
        if self.synonyms && !self.extra_synonyms.is_empty() {
            for w in words.iter_mut().filter(|w| w.kind == Kind::Plain) {
                if let Some((_, to)) = self.extra_synonyms.iter().find(|(f, _)| *f == w.text) {
                    w.text = to.clone();
                }
            }
        }
        Canonical { words, shouted }
    }

    /// One token: a sentence's first capital folded (or all of a shouted prompt's); a plain
    /// lower-case word's misspelling fixed, contraction expanded, number word turned to
    /// digits and British spelling made American.
    fn push_word(&self, mut token: Word, shouted: bool, out: &mut Vec<Word>) {
        if token.kind == Kind::Symbol {
            out.push(token);
            return;
        }
        if token.kind != Kind::Number {
            token.text = token.text.replace('’', "'");
        }
        let written_lower = token.text.chars().all(|c| !c.is_uppercase());
        if shouted {
            token.text = token.text.to_lowercase();
        } else if token.starts && token.kind == Kind::Plain {
            token.text = fold_first_capital(&token.text);
        }
        if token.kind != Kind::Plain || token.text.chars().any(char::is_uppercase) {
            out.push(token);
            return;
        }
        let fuzzy = written_lower && !shouted;
        let lower = match MISSPELLINGS.iter().find(|(m, _)| *m == token.text) {
            Some((_, fixed)) => (*fixed).to_owned(),
            None => token.text.clone(),
        };
        let mut starts = token.starts;
        let contracted = lower.contains('\'');
        for part in expand(&lower) {
            // "I'm" is "I am" (a plain "i" stays: the imaginary unit, a loop variable).
            let part = if contracted && part == "i" {
                "I".to_owned()
            } else {
                part
            };
            let (text, kind) =
                if let Some((_, digits)) = NUMBER_WORDS.iter().find(|(w, _)| *w == part) {
                    ((*digits).to_owned(), Kind::Number)
                } else if let Some((_, us)) = SPELLINGS.iter().find(|(w, _)| *w == part) {
                    ((*us).to_owned(), Kind::Plain)
                } else {
                    (part, Kind::Plain)
                };
            let fuzzy = fuzzy && kind == Kind::Plain && !text.contains('\'');
            out.push(Word {
                text,
                kind,
                article: None,
                starts,
                fuzzy,
            });
            starts = false;
        }
    }
}

/// Whether two tokens say the same. A shouted prompt's words (lower-cased) match the
/// other's only where the other wrote them without capitals (a sentence's first letter
/// and "I" aside): "HOW DO I SORT A LIST" is "How do I sort a list", but "IS RUST SAFE"
/// is not "Is Rust safe" (nor "100 MBPS" "100 MBps").
fn same_text(x: &Word, x_shouted: bool, y: &Word, y_shouted: bool) -> bool {
    if x_shouted == y_shouted || x.kind == Kind::Symbol || y.kind == Kind::Symbol {
        return x.text == y.text;
    }
    let (shout, plain) = if x_shouted { (x, y) } else { (y, x) };
    let caseless = plain.text == "I" || !plain.text.chars().any(char::is_uppercase);
    caseless && shout.text == plain.text.to_lowercase()
}

/// Whether the refused pair differs by order, a negation, a number, or other words.
fn refusal(a: &Canonical, b: &Canonical) -> Refusal {
    let mut x: Vec<&str> = a.words.iter().map(|w| w.text.as_str()).collect();
    let mut y: Vec<&str> = b.words.iter().map(|w| w.text.as_str()).collect();
    x.sort_unstable();
    y.sort_unstable();
    if x == y {
        return Refusal::Order;
    }
    let only = |p: &[&str], q: &[&str]| -> Vec<String> {
        p.iter()
            .filter(|w| !q.contains(w))
            .map(|w| (*w).to_owned())
            .collect()
    };
    let mut diff = only(&x, &y);
    diff.extend(only(&y, &x));
    if diff.iter().any(|w| NEGATIONS.contains(&w.as_str())) {
        Refusal::Negation
    } else if diff
        .iter()
        .any(|w| !w.chars().all(|c| c.is_alphabetic() || c == '\''))
    {
        Refusal::Number
    } else {
        Refusal::Words
    }
}

/// Whether `a` and `b` are exactly one edit apart (substitution, insertion, deletion, or a
/// swap of two neighbours).
fn one_edit_apart(a: &[u8], b: &[u8]) -> bool {
    if a == b {
        return false;
    }
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let prefix = short.iter().zip(long).take_while(|(x, y)| x == y).count();
    match long.len() - short.len() {
        0 => {
            let same_tail = |from: usize| short[from..] == long[from..];
            same_tail(prefix + 1)
                || (prefix + 1 < short.len()
                    && short[prefix] == long[prefix + 1]
                    && short[prefix + 1] == long[prefix]
                    && same_tail(prefix + 2))
        }
        1 => short[prefix..] == long[prefix + 1..],
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> String {
        LexicalGuard::default().canonical(s).text()
    }

    #[test]
    fn variants_share_one_canonical_form() {
        let g = LexicalGuard::default();
        let base = "What is the capital of France?";
        for v in [
            "what is the capital of France",
            "  What   is the capital of France ?!",
            "Could you please tell me what the capital of France is?",
            "Hi! What's the capital of France? Thanks!",
            "Hello, what is the capital of France, please?",
            "What is capital of France",
        ] {
            assert_eq!(g.check(base, v), GuardVerdict::Same, "{v} -> {}", text(v));
        }
        for (a, b) in [
            (
                "In Python, how do I reverse a list?",
                "How do I reverse a list in Python?",
            ),
            ("Should I learn Rust or Go?", "Should I learn Go or Rust?"),
            ("Is Python or Ruby faster?", "Is Ruby or Python faster?"),
            (
                "Which is bigger, an elephant or a whale?",
                "Which is bigger, a whale or an elephant?",
            ),
            (
                "At sea level, what is the boiling point of water?",
                "What is the boiling point of water at sea level?",
            ),
            ("HOW DO I SORT A LIST?", "How do I sort a list?"),
            (
                "What is the difference between TCP and UDP?",
                "What is the difference between UDP and TCP?",
            ),
            ("Why isn't it working?", "Why is it not working?"),
            ("Could you explain recursion?", "Explain recursion."),
            ("Can you tell me who wrote Hamlet?", "Who wrote Hamlet?"),
            (
                "Can you give me an example of a closure?",
                "Give me an example of a closure.",
            ),
            ("Do you know who wrote Hamlet?", "Who wrote Hamlet?"),
            ("What is os.path?", "What is os.path"),
            ("How do I use C++?", "How do I use C++"),
            ("def f():\n    return 1", "def f():\n    return 1"),
        ] {
            assert_eq!(
                g.check(a, b),
                GuardVerdict::Same,
                "{a} [{}] / {b} [{}]",
                text(a),
                text(b)
            );
        }
    }

    #[test]
    fn opposite_and_changed_questions_refuse() {
        let g = LexicalGuard::default();
        for (a, b) in [
            ("How do I turn on dark mode", "How do I turn off dark mode"),
            (
                "Is it safe to eat raw eggs",
                "Is it not safe to eat raw eggs",
            ),
            (
                "Is it safe to eat raw eggs",
                "Isn't it safe to eat raw eggs",
            ),
            ("Can you not go?", "Can't you go?"),
            ("Should I not eat after 8pm?", "Shouldn't I eat after 8pm?"),
            ("What is 2+2?", "What is 2+3?"),
            ("What is 2+2?", "What is 2*2?"),
            ("Convert 5 km to miles", "Convert 5 miles to km"),
            ("What is 3.5 times 2", "What is 35 times 2"),
            ("Capital of France", "Capital of Spain"),
            ("Tips for C++", "Tips for C#"),
            ("How to use Python 2", "How to use Python 3"),
            ("I have a few friends", "I have few friends"),
            ("Boston weather today", "Bolton weather today"),
            ("Is the decimeter bigger", "Is the decameter bigger"),
            // Symbols and operators.
            (
                "What does != mean in Python?",
                "What does = mean in Python?",
            ),
            (
                "What is the difference between --i and i--?",
                "What is the difference between i-- and --i?",
            ),
            ("What does a[1:] return?", "What does a[:1] return?"),
            ("How do I quit vim with :q", "How do I quit vim with :q!"),
            ("What is 5!", "What is 5"),
            (
                "What does the ? operator do in Rust?",
                "What does the ! operator do in Rust?",
            ),
            ("What does x -> y mean", "What does x => y mean"),
            // Case that carries meaning.
            ("How fast is 100 Mbps?", "How fast is 100 MBps?"),
            ("Is Rust safe?", "Is rust safe?"),
            ("IS RUST SAFE?", "Is Rust safe?"),
            ("What does myVar do", "What does myvar do"),
            // Politeness words as content.
            ("Good morning in Japanese", "Good evening in Japanese"),
            ("What rhymes with thanks?", "What rhymes with cheers?"),
            ("What rhymes with please?", "What rhymes with cheers?"),
            ("Can you speak French?", "Speak French."),
            ("Do you know Python?", "Python?"),
            // No synonym list, no openings.
            ("How do I pick a lock?", "How do I choose a lock?"),
            (
                "How do I remove an element in C++?",
                "How do I erase an element in C++?",
            ),
            ("Describe the water cycle", "Explain the water cycle"),
            (
                "What is the meaning of life?",
                "What is the definition of life?",
            ),
            ("How do I look?", "How to look?"),
            // Typos that are words.
            ("What does readline do?", "What does readlines do?"),
            ("Largest county in the US", "Largest country in the US"),
            ("Doctors prescribe it", "Doctors proscribe it"),
            ("strcpy vs memcpy", "strncpy vs memcpy"),
            ("Is silicone toxic?", "Is silicon toxic?"),
            (
                "What is abduction of the hip?",
                "What is adduction of the hip?",
            ),
            // Articles swapped, idioms with an order.
            (
                "What is a number of planets",
                "What is the number of planets",
            ),
            ("What is the time?", "What is time?"),
            ("I have a cold", "I have cold"),
            ("Can you show emotions?", "Show emotions."),
            ("Can you summarize PDFs?", "Summarize PDFs."),
            ("Are you able to explain jokes?", "Explain jokes."),
            ("Is it more or less", "Is it less or more"),
            (
                "Compare salary in Berlin versus Munich.",
                "Compare salary in Munich versus Berlin.",
            ),
            ("Can you write Python code?", "Write Python code."),
            ("What does tar -C do?", "What does tar -c do?"),
            (
                "In a regex, what does \\S match?",
                "In a regex, what does \\s match?",
            ),
        ] {
            assert!(
                !g.check(a, b).passes(),
                "{a} [{}] / {b} [{}]",
                text(a),
                text(b)
            );
        }
    }

    #[test]
    fn typos_are_forgiven_only_when_asked() {
        let g = LexicalGuard::default();
        assert!(
            !g.check("how to reverse a string", "how to reevrse a string")
                .passes()
        );
        let loose = LexicalGuard::default().max_typos(1);
        assert_eq!(
            loose.check("how to reverse a string", "how to reevrse a string"),
            GuardVerdict::Typos(1)
        );
        assert!(!loose.check("Who is Johnson", "Who is Johnston").passes());
        assert!(!loose.check("largest county", "largest country").passes());
    }

    #[test]
    fn edits() {
        assert!(one_edit_apart(b"reverse", b"reevrse"));
        assert!(one_edit_apart(b"reverse", b"revers"));
        assert!(one_edit_apart(b"reverse", b"reversa"));
        assert!(!one_edit_apart(b"reverse", b"reverse"));
        assert!(!one_edit_apart(b"reverse", b"rveesre"));
    }
}
