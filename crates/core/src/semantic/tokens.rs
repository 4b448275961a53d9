//! The guard's tokens: a prompt split at whitespace into words, numbers, identifiers and
//! verbatim symbols, with only sentence-final punctuation dropped. Pure functions, no I/O;
//! the rules that compare tokens are guard.rs and rewrite.rs.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Letters, maybe with inner apostrophes or hyphens.
    Plain,
    /// Digits, maybe with inner `.`, `,`, `:` or `/`.
    Number,
    /// Letters, digits and `_` with single inner `.`, `-`, `/`, `:` or `'`, maybe ending
    /// in `+` or `#` (`os.path`, `gpt-4`, `c++`).
    Ident,
    /// Anything else, verbatim (`!=`, `a[1:]`, `:q!`, a comma).
    Symbol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Article {
    Indefinite,
    Definite,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Word {
    pub(super) text: String,
    pub(super) kind: Kind,
    /// The article written before it: omitting one is allowed, swapping "a" for "the" not.
    pub(super) article: Option<Article>,
    /// The first token of a sentence.
    pub(super) starts: bool,
    /// Written as a plain lower-case word: only such a word may be forgiven a typo.
    pub(super) fuzzy: bool,
}

impl Word {
    pub(super) fn new(text: impl Into<String>, kind: Kind, starts: bool) -> Word {
        Word {
            text: text.into(),
            kind,
            article: None,
            starts,
            fuzzy: false,
        }
    }

    pub(super) fn is(&self, text: &str) -> bool {
        self.kind == Kind::Plain && self.text == text
    }

    pub(super) fn is_one_of(&self, list: &[&str]) -> bool {
        self.kind == Kind::Plain && list.contains(&self.text.as_str())
    }

    /// A comma, colon or semicolon token.
    pub(super) fn is_pause(&self) -> bool {
        self.kind == Kind::Symbol && matches!(self.text.as_str(), "," | ":" | ";")
    }
}

const QUOTES: &[char] = &['"', '\'', '`', '“', '”', '‘', '’', '«', '»'];
/// Sentence-final punctuation: the only punctuation that may be dropped.
const FINAL: &[char] = &['.', '?', '!', '…'];
/// Pauses: kept as tokens of their own when they follow a word.
const PAUSES: &[char] = &[',', ';', ':'];

/// Split a prompt into tokens, and whether it is shouted (every letter a capital, at least
/// two words of two letters or more). Whitespace separates tokens (an indented line keeps
/// its indentation as a token: it is syntax in code; a line break is no sentence end); a
/// chunk between whitespace is one
/// word, number or identifier when it is one, with its sentence-final punctuation dropped,
/// quotes around it dropped and a trailing comma, colon or semicolon as a token of its
/// own; any other chunk is one verbatim symbol token (`!=`, `--i`, `a[:1]`, `:q!`, `5!`).
pub(super) fn lex(text: &str) -> (Vec<Word>, bool) {
    let mut out = Vec::new();
    let mut starts = true;
    for (n, line) in text.split('\n').enumerate() {
        let indent: String = line
            .chars()
            .take_while(|c| *c == ' ' || *c == '\t')
            .collect();
        if n > 0 && !indent.is_empty() && !line.trim().is_empty() {
            out.push(Word::new(format!("\n{indent}"), Kind::Symbol, false));
        }
        let chunks: Vec<&str> = line.split_whitespace().collect();
        for (k, chunk) in chunks.iter().enumerate() {
            let next = chunks.get(k + 1).copied().or_else(|| {
                text.split('\n')
                    .skip(n + 1)
                    .flat_map(str::split_whitespace)
                    .next()
            });
            starts = lex_chunk(chunk, next, starts, &mut out);
        }
    }
    // A comma, colon or semicolon that ends the prompt ends its last sentence.
    if out
        .last()
        .is_some_and(|w| matches!(w.text.as_str(), "," | ":" | ";"))
    {
        out.pop();
    }
    let no_lower = !text.chars().any(char::is_lowercase);
    let capital_words = text
        .split_whitespace()
        .filter(|c| c.chars().filter(|ch| ch.is_uppercase()).count() >= 2)
        .count();
    (out, no_lower && capital_words >= 2)
}

/// One whitespace-separated chunk (`next` the one after it); returns whether it ends a
/// sentence.
fn lex_chunk(chunk: &str, next: Option<&str>, starts: bool, out: &mut Vec<Word>) -> bool {
    let chars: Vec<char> = chunk.chars().collect();
    let mut lo = 0;
    while lo < chars.len() && QUOTES.contains(&chars[lo]) {
        lo += 1;
    }
    let mut hi = chars.len();
    while hi > lo
        && (QUOTES.contains(&chars[hi - 1])
            || FINAL.contains(&chars[hi - 1])
            || PAUSES.contains(&chars[hi - 1]))
    {
        hi -= 1;
    }
    let verbatim = |out: &mut Vec<Word>| {
        out.push(Word::new(chunk, Kind::Symbol, starts));
        false
    };
    if lo >= hi {
        // Punctuation alone ends a sentence only at the end or before a capital: "What
        // does the ? operator do" names an operator.
        let at_end = next.is_none_or(|n| n.chars().next().is_some_and(char::is_uppercase));
        if at_end && chars.iter().all(|c| FINAL.contains(c)) {
            return true;
        }
        return verbatim(out);
    }
    let stem: String = chars[lo..hi].iter().collect();
    let tail = &chars[hi..];
    let Some(kind) = classify(&stem) else {
        return verbatim(out);
    };
    // "!" ends a sentence only after a word: after a digit or one letter it is a
    // factorial ("5!", "n!").
    if tail.contains(&'!') && !(kind == Kind::Plain && stem.chars().count() >= 2) {
        return verbatim(out);
    }
    out.push(Word::new(stem, kind, starts));
    let pauses: String = tail.iter().filter(|c| PAUSES.contains(c)).collect();
    if !pauses.is_empty() {
        out.push(Word::new(pauses, Kind::Symbol, false));
    }
    tail.iter()
        .rev()
        .find(|c| !QUOTES.contains(c))
        .is_some_and(|c| FINAL.contains(c))
}

/// The kind of a chunk's stem, if it is a word, a number or an identifier.
fn classify(stem: &str) -> Option<Kind> {
    let chars: Vec<char> = stem.chars().collect();
    let inner = |i: usize, ok: fn(char) -> bool| {
        i > 0 && i + 1 < chars.len() && ok(chars[i - 1]) && ok(chars[i + 1])
    };
    let plain = chars.iter().enumerate().all(|(i, &c)| {
        c.is_alphabetic() || (matches!(c, '\'' | '’' | '-') && inner(i, char::is_alphabetic))
    });
    if plain {
        return Some(Kind::Plain);
    }
    let number = chars[0].is_ascii_digit()
        && chars.iter().enumerate().all(|(i, &c)| {
            c.is_ascii_digit()
                || (matches!(c, '.' | ',' | ':' | '/') && inner(i, |d| d.is_ascii_digit()))
        });
    if number {
        return Some(Kind::Number);
    }
    let body_end = chars
        .iter()
        .rposition(|c| !matches!(c, '+' | '#'))
        .map_or(0, |p| p + 1);
    let word_char = |c: char| c.is_alphanumeric() || c == '_';
    let ident = body_end > 0
        && word_char(chars[0])
        && chars[..body_end].iter().enumerate().all(|(i, &c)| {
            word_char(c)
                || (matches!(c, '.' | '-' | '/' | ':' | '\'' | '’')
                    && i > 0
                    && i + 1 < body_end
                    && word_char(chars[i - 1])
                    && word_char(chars[i + 1]))
        });
    ident.then_some(Kind::Ident)
}
