//! The caption tokenisation of the COCO caption evaluation (`pycocoevalcap`'s `PTBTokenizer`).
//!
//! pycocoevalcap runs Stanford CoreNLP 3.4.1's `PTBTokenizer -preserveLines -lowerCase` in Java
//! over one caption per line, then drops the tokens in [`PUNCTUATIONS`]. This module reproduces that
//! in Rust for the text captions are made of: words, contractions (`is n't`, `'s`, `'re`), the
//! `cannot`/`gonna` splits, hyphenated and apostrophe words (`o'clock`, `rock 'n' roll`), numbers
//! (`3.5`, `1,000`, `3:00`, `-5`, fractions `2 1/2` joined by a no-break space as Java does),
//! abbreviations and acronyms (`st.`, `mr.`, `u.s.`, `b.`), quotes (all removed), brackets (kept as
//! `-lrb-` etc. because the punctuation list only names the upper-case forms), ellipses, dashes,
//! currency (`£` -> `#`, `€` -> `$`, `¢` -> `cents`), smileys, URLs, e-mails, `@names`, `#tags`.
//!
//! Like the JFlex lexer it imitates, it takes the longest match at each position, the earlier rule
//! winning ties, with trailing context counted in the match length. The goldens in
//! `tests/fixtures/metrics/` come from the real Java tokenizer.

/// The tokens pycocoevalcap removes after tokenising (exact, case-sensitive strings).
pub const PUNCTUATIONS: &[&str] = &[
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
    "...", ";",
];

/// Tokenises one caption as pycocoevalcap does and joins the kept tokens with single spaces.
/// Newlines inside the caption become spaces (as in pycocoevalcap).
///
/// pycocoevalcap tokenises all captions of a file in one run, and the lexer looks a few characters
/// past the end of a line; [`tokenize_captions`] reproduces that exactly, this single-caption form
/// can differ only where a caption ends in `no.`/`art.`/... and the next one starts with a digit.
pub fn tokenize_caption(caption: &str) -> String {
    tokenize_captions(&[caption]).pop().unwrap_or_default()
}

/// Tokenises captions as one pycocoevalcap run does (one caption per line, in this order) and
/// returns each caption's kept tokens joined with single spaces.
pub fn tokenize_captions<S: AsRef<str>>(captions: &[S]) -> Vec<String> {
    let lines: Vec<String> = captions
        .iter()
        .map(|c| c.as_ref().replace('\n', " "))
        .collect();
    ptb_tokenize_lines(&lines)
        .into_iter()
        .map(|toks| {
            toks.into_iter()
                .filter(|t| !PUNCTUATIONS.contains(&t.as_str()))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// The lower-cased PTB tokens of one line, before punctuation removal (what the Java tool prints).
pub fn ptb_tokens(line: &str) -> Vec<String> {
    ptb_tokenize_lines(&[line]).pop().unwrap_or_default()
}

/// The Java tool's output for a file made of `lines` joined by `\n`: each line's lower-cased
/// tokens, before punctuation removal.
pub fn ptb_tokenize_lines<S: AsRef<str>>(lines: &[S]) -> Vec<Vec<String>> {
    let text = lines
        .iter()
        .map(|l| l.as_ref())
        .collect::<Vec<_>>()
        .join("\n");
    let chars: Vec<char> = text.chars().collect();
    let mut out: Vec<Vec<String>> = vec![Vec::new(); lines.len().max(1)];
    let mut line = 0;
    let mut pos = 0;
    while pos < chars.len() {
        if chars[pos] == '\n' {
            line += 1;
            pos += 1;
            continue;
        }
        match longest(&chars, pos) {
            Some(m) => {
                if let Some(text) = m.text {
                    if !text.is_empty() {
                        out[line].push(text.to_lowercase());
                    }
                }
                if m.dup_period {
                    out[line].push(".".to_string());
                }
                pos += m.consume.max(1);
            }
            None => pos += 1, // untokenizable: deleted, as the Java default does
        }
    }
    out.truncate(lines.len());
    out
}

/// One rule's match: how far it reaches (with trailing context), what it consumes, what it emits.
struct Match {
    reach: usize,
    consume: usize,
    text: Option<String>,
    /// An abbreviation at a sentence end is followed by an extra "." token.
    dup_period: bool,
}

fn m(reach: usize, consume: usize, text: impl Into<String>) -> Option<Match> {
    Some(Match {
        reach,
        consume,
        text: Some(text.into()),
        dup_period: false,
    })
}

type Rule = fn(&[char], usize) -> Option<Match>;

/// Rules in the lexer's order (earlier wins ties).
const RULES: &[Rule] = &[
    r_assimilation,
    r_sgml,
    r_mdash,
    r_amp_entity,
    r_word_redaux,
    r_sword_sredaux,
    r_word,
    r_apoword,
    r_apoword2,
    r_url,
    r_email,
    r_twitter,
    r_redaux_ctx,
    r_sredaux_ctx,
    r_number,
    r_frac,
    r_frac2,
    r_tbspec,
    r_thing3,
    r_dolsign,
    r_dolsign2,
    r_abbrev,
    r_dblquote,
    r_thing,
    r_thinga,
    r_redaux,
    r_quotes,
    r_lt_gt,
    r_smiley,
    r_brackets,
    r_hyphens,
    r_ldots,
    r_fnmarks,
    r_asts,
    r_insentp,
    r_bang,
    r_period,
    r_equals_slash,
    r_hthing,
    r_word_period,
    r_misc,
    r_space,
];

fn longest(s: &[char], pos: usize) -> Option<Match> {
    // the lexer sees UTF-16: a character outside the BMP is two surrogates it cannot tokenise,
    // and they are deleted (emoji vanish)
    if s[pos] > '\u{FFFF}' {
        return None;
    }
    let mut best: Option<Match> = None;
    for rule in RULES {
        if let Some(mm) = rule(s, pos) {
            if mm.reach > 0 && best.as_ref().is_none_or(|b| mm.reach > b.reach) {
                best = Some(mm);
            }
        }
    }
    best
}

// ---------- character classes ----------

fn is_letter(c: char) -> bool {
    c.is_alphabetic() || c == '\u{AD}'
}
fn is_digit(c: char) -> bool {
    c.is_ascii_digit() || crate::py::is_decimal(c)
}
fn is_alnum(c: char) -> bool {
    is_letter(c) || is_digit(c)
}
fn is_apos(c: char) -> bool {
    matches!(c, '\'' | '\u{92}' | '\u{2019}')
}
fn is_apos_etc(c: char) -> bool {
    is_apos(c) || matches!(c, '`' | '\u{91}' | '\u{2018}' | '\u{201B}')
}
fn is_hyphen(c: char) -> bool {
    matches!(c, '-' | '_' | '\u{58A}' | '\u{2010}' | '\u{2011}')
}
fn is_space(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '\u{A0}' | '\u{2000}'..='\u{200A}' | '\u{3000}'
    )
}
fn is_newline(c: char) -> bool {
    matches!(
        c,
        '\r' | '\n' | '\u{2028}' | '\u{2029}' | '\u{B}' | '\u{C}' | '\u{85}'
    )
}
fn at(s: &[char], i: usize) -> Option<char> {
    s.get(i).copied()
}
fn eq_ic(s: &[char], pos: usize, lit: &str) -> bool {
    let mut i = pos;
    for c in lit.chars() {
        match at(s, i) {
            Some(x) if x.to_lowercase().eq(c.to_lowercase()) => i += 1,
            _ => return false,
        }
    }
    true
}
fn run(s: &[char], pos: usize, f: impl Fn(char) -> bool) -> usize {
    let mut i = pos;
    while i < s.len() && f(s[i]) {
        i += 1;
    }
    i - pos
}
fn letter_not_class(s: &[char], i: usize) -> bool {
    // trailing context `[^A-Za-z]`: any character that is not an ASCII letter (end of input fails)
    matches!(at(s, i), Some(c) if !c.is_ascii_alphabetic())
}

// ---------- token shapes ----------

/// WORD = LETTER (LETTER|DIGIT)* ([.!?] LETTER (LETTER|DIGIT)*)*
fn word_len(s: &[char], pos: usize) -> usize {
    if !at(s, pos).is_some_and(is_letter) {
        return 0;
    }
    let mut i = pos + run(s, pos, is_alnum);
    loop {
        if matches!(at(s, i), Some('.' | '!' | '?')) && at(s, i + 1).is_some_and(is_letter) {
            i += 1 + run(s, i + 1, is_alnum);
        } else {
            return i - pos;
        }
    }
}

/// REDAUX = APOS ([msdMSD]|re|ve|ll)
fn redaux_len(s: &[char], pos: usize) -> usize {
    if !at(s, pos).is_some_and(is_apos) {
        return 0;
    }
    if eq_ic(s, pos + 1, "re") || eq_ic(s, pos + 1, "ve") || eq_ic(s, pos + 1, "ll") {
        return 3;
    }
    if matches!(at(s, pos + 1), Some('m' | 's' | 'd' | 'M' | 'S' | 'D')) {
        return 2;
    }
    0
}

/// SREDAUX = n APOSETC t
fn sredaux_len(s: &[char], pos: usize) -> usize {
    if matches!(at(s, pos), Some('n' | 'N'))
        && at(s, pos + 1).is_some_and(is_apos_etc)
        && matches!(at(s, pos + 2), Some('t' | 'T'))
    {
        3
    } else {
        0
    }
}

fn normalize_apos(t: &str) -> String {
    t.chars()
        .map(|c| if is_apos_etc(c) { '\'' } else { c })
        .collect()
}

fn text(s: &[char], pos: usize, len: usize) -> String {
    s[pos..pos + len].iter().collect()
}

// ---------- rules ----------

fn r_assimilation(s: &[char], pos: usize) -> Option<Match> {
    if eq_ic(s, pos, "cannot") {
        return m(6, 3, text(s, pos, 3));
    }
    for w in ["gonna", "gotta", "lemme", "gimme", "wanna"] {
        if eq_ic(s, pos, w) {
            return m(5, 3, text(s, pos, 3));
        }
    }
    None
}

/// `<tag ...>` and `</tag>`.
fn r_sgml(s: &[char], pos: usize) -> Option<Match> {
    if at(s, pos) != Some('<') {
        return None;
    }
    let mut i = pos + 1;
    if at(s, i) == Some('/') {
        i += 1;
    }
    if !matches!(at(s, i), Some(c) if c.is_ascii_alphabetic() || c == '!' || c == '?') {
        return None;
    }
    while let Some(c) = at(s, i) {
        if c == '>' {
            let n = i + 1 - pos;
            return m(n, n, text(s, pos, n));
        }
        if c == '\r' || c == '\n' {
            return None;
        }
        i += 1;
    }
    None
}

fn r_mdash(s: &[char], pos: usize) -> Option<Match> {
    if matches!(
        at(s, pos)?,
        '\u{96}' | '\u{97}' | '\u{2013}' | '\u{2014}' | '\u{2015}'
    ) {
        return m(1, 1, "--");
    }
    for e in ["&MD;", "&mdash;", "&ndash;"] {
        if eq_ic(s, pos, e) {
            let n = e.chars().count();
            return m(n, n, "--");
        }
    }
    None
}

fn r_amp_entity(s: &[char], pos: usize) -> Option<Match> {
    eq_ic(s, pos, "&amp;").then(|| Match {
        reach: 5,
        consume: 5,
        text: Some("&".into()),
        dup_period: false,
    })
}

fn r_word_redaux(s: &[char], pos: usize) -> Option<Match> {
    let w = word_len(s, pos);
    if w == 0 {
        return None;
    }
    let r = redaux_len(s, pos + w);
    let ends = at(s, pos + w + r).is_none_or(|c| !c.is_ascii_alphabetic());
    (r > 0 && ends).then(|| Match {
        reach: w + r,
        consume: w,
        text: Some(text(s, pos, w)),
        dup_period: false,
    })
}

/// SWORD = [A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*, followed by n't.
fn r_sword_sredaux(s: &[char], pos: usize) -> Option<Match> {
    let n = run(s, pos, |c| c.is_ascii_alphabetic() || c == '\u{AD}');
    // the longest prefix ending in a letter other than n (then optional soft hyphens)
    // such that n't follows directly
    for w in (1..=n).rev() {
        let mut last = pos + w - 1;
        while last > pos && s[last] == '\u{AD}' {
            last -= 1;
        }
        let c = s[last];
        if !c.is_ascii_alphabetic() || c == 'n' || c == 'N' {
            continue;
        }
        if sredaux_len(s, pos + w) == 3 {
            return m(w + 3, w, text(s, pos, w));
        }
    }
    None
}

fn r_word(s: &[char], pos: usize) -> Option<Match> {
    let w = word_len(s, pos);
    (w > 0).then(|| Match {
        reach: w,
        consume: w,
        text: Some(text(s, pos, w).replace('\u{AD}', "")),
        dup_period: false,
    })
}

/// The apostrophe words kept whole: `'n'`, `l'`, `d'`, `O'Neil`, `'90s`, `'til`, `'em`, ...
fn r_apoword(s: &[char], pos: usize) -> Option<Match> {
    let mut best = 0;
    let c0 = at(s, pos)?;
    // {APOS}n{APOS}? (a bare 'n only before a non-letter)
    if is_apos(c0) && matches!(at(s, pos + 1), Some('n' | 'N')) {
        if at(s, pos + 2).is_some_and(is_apos) {
            best = best.max(3);
        } else if !at(s, pos + 2).is_some_and(is_letter) {
            best = best.max(2);
        }
    }
    // [lLdDjJ]{APOS}
    if matches!(c0, 'l' | 'L' | 'd' | 'D' | 'j' | 'J') && at(s, pos + 1).is_some_and(is_apos) {
        best = best.max(2);
    }
    for lit in ["Dunkin'", "somethin'", "ol'"] {
        if eq_ic(s, pos, &lit[..lit.len() - 1]) {
            let k = lit.chars().count();
            if at(s, pos + k - 1).is_some_and(is_apos) {
                best = best.max(k);
            }
        }
    }
    if is_apos(c0) && eq_ic(s, pos + 1, "em") {
        best = best.max(3);
    }
    // [A-HJ-XZn]{APOSETCETERA}[:letter:]{2}[:letter:]*
    if ((c0.is_ascii_uppercase() && c0 != 'I' && c0 != 'Y') || c0 == 'n')
        && at(s, pos + 1).is_some_and(is_apos_etc)
    {
        {
            let l = run(s, pos + 2, is_letter);
            if l >= 2 {
                best = best.max(2 + l);
            }
        }
    }
    // {APOS}[2-9]0s
    if is_apos(c0)
        && matches!(at(s, pos + 1), Some('2'..='9'))
        && at(s, pos + 2) == Some('0')
        && matches!(at(s, pos + 3), Some('s' | 'S'))
    {
        best = best.max(4);
    }
    // {APOS}till?
    if is_apos(c0) && eq_ic(s, pos + 1, "til") {
        best = best.max(if matches!(at(s, pos + 4), Some('l' | 'L')) {
            5
        } else {
            4
        });
    }
    // [:letter:][:letter:]*[aeiouyAEIOUY]{APOSETCETERA}[aeiouA-Z][:letter:]*
    let l = run(s, pos, is_letter);
    for k in (2..=l).rev() {
        let v = s[pos + k - 1];
        if "aeiouyAEIOUY".contains(v)
            && at(s, pos + k).is_some_and(is_apos_etc)
            && matches!(at(s, pos + k + 1), Some(c) if "aeiou".contains(c) || c.is_ascii_uppercase())
        {
            let tail = run(s, pos + k + 2, is_letter);
            best = best.max(k + 2 + tail);
            break;
        }
    }
    if is_apos(c0) && eq_ic(s, pos + 1, "cause") {
        best = best.max(6);
    }
    for lit in [
        "cont'd",
        "nor'easter",
        "c'mon",
        "e'er",
        "s'mores",
        "ev'ry",
        "li'l",
        "nat'l",
    ] {
        if eq_ic(s, pos, lit) {
            let mut k = lit.chars().count();
            if lit == "cont'd" && at(s, pos + k) == Some('.') {
                k += 1;
            }
            best = best.max(k);
        }
    }
    if matches!(c0, 'O' | 'o')
        && at(s, pos + 1).is_some_and(is_apos_etc)
        && at(s, pos + 2) == Some('o')
    {
        best = best.max(3);
    }
    (best > 0).then(|| Match {
        reach: best,
        consume: best,
        text: Some(normalize_apos(&text(s, pos, best))),
        dup_period: false,
    })
}

/// y' before a letter (y'all -> y' all).
fn r_apoword2(s: &[char], pos: usize) -> Option<Match> {
    (matches!(at(s, pos), Some('y' | 'Y'))
        && at(s, pos + 1).is_some_and(is_apos)
        && at(s, pos + 2).is_some_and(is_letter))
    .then(|| Match {
        reach: 3,
        consume: 2,
        text: Some(normalize_apos(&text(s, pos, 2))),
        dup_period: false,
    })
}

fn url_char(c: char) -> bool {
    !c.is_whitespace() && !"\"<>|()".contains(c)
}

fn r_url(s: &[char], pos: usize) -> Option<Match> {
    let start = if eq_ic(s, pos, "https://") {
        8
    } else if eq_ic(s, pos, "http://") {
        7
    } else {
        return likely_url(s, pos);
    };
    let n = run(s, pos + start, url_char);
    let mut k = start + n;
    while k > start && ".!?{},-".contains(s[pos + k - 1]) {
        k -= 1;
    }
    (k > start).then(|| Match {
        reach: k,
        consume: k,
        text: Some(text(s, pos, k)),
        dup_period: false,
    })
}

/// www.x.com or x.com/.net/.org/.edu, optionally with a path.
fn likely_url(s: &[char], pos: usize) -> Option<Match> {
    let seg = |c: char| !c.is_whitespace() && !"\"<>|.!?(){},".contains(c);
    let mut host_end = 0;
    if eq_ic(s, pos, "www.") {
        let mut i = pos + 4;
        // ([^...]+\.)+[a-zA-Z]{2,4}
        loop {
            let n = run(s, i, seg);
            if n == 0 {
                break;
            }
            if at(s, i + n) == Some('.') {
                let tld = run(s, i + n + 1, |c| c.is_ascii_alphabetic());
                if (2..=4).contains(&tld) {
                    host_end = host_end.max(i + n + 1 + tld - pos);
                }
                i += n + 1;
            } else {
                break;
            }
        }
    }
    {
        // `[^ \t\n\f\r\"`'<>|.!?(){},-_$]`: JFlex reads `,-_` as the range U+002C..U+005F
        let seg2 = |c: char| {
            !c.is_whitespace()
                && !"\"`'<>|.!?(){}$".contains(c)
                && !('\u{2C}'..='\u{5F}').contains(&c)
        };
        let mut i = pos;
        loop {
            let n = run(s, i, seg2);
            if n == 0 || at(s, i + n) != Some('.') {
                break;
            }
            i += n + 1;
            for tld in ["com", "net", "org", "edu"] {
                if eq_ic(s, i, tld) {
                    host_end = host_end.max(i + 3 - pos);
                }
            }
        }
    }
    if host_end == 0 {
        return None;
    }
    let mut k = host_end;
    if at(s, pos + k) == Some('/') {
        let n = run(s, pos + k + 1, url_char);
        let mut e = n;
        while e > 0 && ".!?(){},-".contains(s[pos + k + e]) {
            e -= 1;
        }
        if e > 0 {
            k += 1 + e;
        }
    }
    m(k, k, text(s, pos, k))
}

fn r_email(s: &[char], pos: usize) -> Option<Match> {
    if !at(s, pos).is_some_and(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let body = |c: char| !c.is_whitespace() && !"\"<>|()\u{A0}".contains(c);
    let n = run(s, pos, body);
    // the last '@' inside the run that has a valid domain after it
    let mut best = 0;
    for a in (pos + 1..pos + n).rev() {
        if s[a] != '@' {
            continue;
        }
        // dot-separated domain segments of letters, digits, '-' and '_'
        let dom = |c: char| !c.is_whitespace() && !"\"<>|().{}[]\u{A0}".contains(c);
        let mut i = a + 1;
        let mut end = 0;
        loop {
            let k = run(s, i, dom);
            if k == 0 {
                break;
            }
            end = i + k;
            if at(s, i + k) == Some('.') && at(s, i + k + 1).is_some_and(dom) {
                i += k + 1;
            } else {
                break;
            }
        }
        if end > 0 {
            best = end - pos;
            break;
        }
    }
    (best > 0).then(|| Match {
        reach: best,
        consume: best,
        text: Some(text(s, pos, best)),
        dup_period: false,
    })
}

fn r_twitter(s: &[char], pos: usize) -> Option<Match> {
    match at(s, pos)? {
        '@' => {
            let c = at(s, pos + 1)?;
            if !(c.is_ascii_alphabetic() || c == '_') {
                return None;
            }
            let n = 1 + run(s, pos + 1, |c| c.is_ascii_alphanumeric() || c == '_');
            m(n, n, text(s, pos, n))
        }
        '#' => {
            // `#` and letters only (digits split off: "#tag10" -> "#tag" "10")
            let w = run(s, pos + 1, |c| c.is_ascii_alphabetic());
            (w > 0).then(|| Match {
                reach: w + 1,
                consume: w + 1,
                text: Some(text(s, pos, w + 1)),
                dup_period: false,
            })
        }
        _ => None,
    }
}

fn r_redaux_ctx(s: &[char], pos: usize) -> Option<Match> {
    let r = redaux_len(s, pos);
    (r > 0 && letter_not_class(s, pos + r)).then(|| Match {
        reach: r + 1,
        consume: r,
        text: Some(normalize_apos(&text(s, pos, r))),
        dup_period: false,
    })
}

fn r_sredaux_ctx(s: &[char], pos: usize) -> Option<Match> {
    let r = sredaux_len(s, pos);
    (r > 0 && letter_not_class(s, pos + r)).then(|| Match {
        reach: r + 1,
        consume: r,
        text: Some(normalize_apos(&text(s, pos, r))),
        dup_period: false,
    })
}

/// NUM = DIGIT+ | DIGIT* ([.:,\u00AD\u066B\u066C] DIGIT+)+ ; NUMBER = [-+]? NUM ; also DATE.
fn num_len(s: &[char], pos: usize) -> usize {
    let mut i = pos + run(s, pos, is_digit);
    loop {
        if matches!(
            at(s, i),
            Some('.' | ':' | ',' | '\u{AD}' | '\u{66B}' | '\u{66C}')
        ) && at(s, i + 1).is_some_and(is_digit)
        {
            i += 1 + run(s, i + 1, is_digit);
        } else {
            break;
        }
    }
    i - pos
}

fn r_number(s: &[char], pos: usize) -> Option<Match> {
    let sign = usize::from(matches!(at(s, pos), Some('-' | '+')));
    let n = num_len(s, pos + sign);
    let mut best = if n > 0 { sign + n } else { 0 };
    // DATE = d{1,2}[-/]d{1,2}[-/]d{2,4}
    let d1 = run(s, pos, is_digit);
    if (1..=2).contains(&d1) && matches!(at(s, pos + d1), Some('-' | '/')) {
        let d2 = run(s, pos + d1 + 1, is_digit);
        if (1..=2).contains(&d2) && matches!(at(s, pos + d1 + 1 + d2), Some('-' | '/')) {
            let d3 = run(s, pos + d1 + d2 + 2, is_digit);
            if d3 >= 2 {
                best = best.max(d1 + d2 + 2 + d3.min(4));
            }
        }
    }
    (best > 0).then(|| Match {
        reach: best,
        consume: best,
        text: Some(text(s, pos, best).replace('\u{AD}', "")),
        dup_period: false,
    })
}

/// FRAC = (d{1,4}[- \u00A0])? d{1,4} (\\?/|\u2044) d{1,4}; a space inside becomes U+00A0.
fn r_frac(s: &[char], pos: usize) -> Option<Match> {
    let simple = |i: usize| -> usize {
        let a = run(s, i, is_digit);
        if !(1..=4).contains(&a) {
            return 0;
        }
        let mut j = i + a;
        if at(s, j) == Some('\\') && at(s, j + 1) == Some('/') {
            j += 2;
        } else if matches!(at(s, j), Some('/' | '\u{2044}')) {
            j += 1;
        } else {
            return 0;
        }
        let b = run(s, j, is_digit);
        if b == 0 {
            return 0;
        }
        j + b.min(4) - i
    };
    let mut best = simple(pos);
    let a = run(s, pos, is_digit);
    if (1..=4).contains(&a) && matches!(at(s, pos + a), Some('-' | ' ' | '\u{A0}')) {
        let k = simple(pos + a + 1);
        if k > 0 {
            best = best.max(a + 1 + k);
        }
    }
    (best > 0).then(|| Match {
        reach: best,
        consume: best,
        text: Some(text(s, pos, best).replace(' ', "\u{A0}")),
        dup_period: false,
    })
}

fn r_frac2(s: &[char], pos: usize) -> Option<Match> {
    let t = match at(s, pos)? {
        '\u{BC}' => "1/4",
        '\u{BD}' => "1/2",
        '\u{BE}' => "3/4",
        '\u{2153}' => "1/3",
        '\u{2154}' => "2/3",
        c @ '\u{2155}'..='\u{215E}' => return m(1, 1, c.to_string()),
        _ => return None,
    };
    m(1, 1, t)
}

fn r_tbspec(s: &[char], pos: usize) -> Option<Match> {
    let mut best = 0;
    for lit in [
        "-RRB-",
        "-LRB-",
        "-RCB-",
        "-LCB-",
        "-RSB-",
        "-LSB-",
        "C.D.s",
        "pro-",
        "anti-",
        "S&P-500",
        "S&amp;P-500",
        "S&Ls",
        "S&amp;Ls",
    ] {
        if eq_ic(s, pos, lit) {
            best = best.max(lit.chars().count());
        }
    }
    for (a, b) in [("cap", "n"), ("c", "est")] {
        if eq_ic(s, pos, a) {
            let k = a.len();
            if at(s, pos + k).is_some_and(is_apos) && eq_ic(s, pos + k + 1, b) {
                best = best.max(k + 1 + b.len());
            }
        }
    }
    // TBSPEC2 = APOS [0-9][0-9] ('90), not right after a letter or digit (5'10" is 5 ' 10 '')
    if at(s, pos).is_some_and(is_apos)
        && !(pos > 0 && is_alnum(s[pos - 1]))
        && at(s, pos + 1).is_some_and(|c| c.is_ascii_digit())
        && at(s, pos + 2).is_some_and(|c| c.is_ascii_digit())
        && !at(s, pos + 3).is_some_and(|c| is_alnum(c) || c == '-')
    {
        best = best.max(3);
    }
    for lit in ["E!", "Yahoo!", "Jeopardy!", "OK!"] {
        if eq_ic(s, pos, lit) {
            best = best.max(lit.chars().count());
        }
    }
    (best > 0).then(|| Match {
        reach: best,
        consume: best,
        text: Some(normalize_apos(&text(s, pos, best))),
        dup_period: false,
    })
}

/// THING3 = [alnum]+(-[alpha]+){0,2}(\\?/[alnum]+(-[alpha]+){0,2}){1,2}: and/or, black/white.
fn r_thing3(s: &[char], pos: usize) -> Option<Match> {
    let part = |i: usize| -> usize {
        let a = run(s, i, is_alnum);
        if a == 0 {
            return 0;
        }
        let mut j = i + a;
        for _ in 0..2 {
            if at(s, j) == Some('-') {
                let b = run(s, j + 1, is_letter);
                if b > 0 {
                    j += 1 + b;
                    continue;
                }
            }
            break;
        }
        j - i
    };
    let first = part(pos);
    if first == 0 {
        return None;
    }
    let mut j = pos + first;
    let mut best = 0;
    for _ in 0..2 {
        let sl = if at(s, j) == Some('\\') && at(s, j + 1) == Some('/') {
            2
        } else if at(s, j) == Some('/') {
            1
        } else {
            break;
        };
        let p = part(j + sl);
        if p == 0 {
            break;
        }
        j += sl + p;
        best = j - pos;
    }
    (best > 0).then(|| Match {
        reach: best,
        consume: best,
        text: Some(text(s, pos, best)),
        dup_period: false,
    })
}

/// DOLSIGN = [A-Z]*\$ | #
fn r_dolsign(s: &[char], pos: usize) -> Option<Match> {
    let a = run(s, pos, |c| c.is_ascii_uppercase());
    if at(s, pos + a) == Some('$') {
        return m(a + 1, a + 1, text(s, pos, a + 1));
    }
    (at(s, pos) == Some('#')).then(|| Match {
        reach: 1,
        consume: 1,
        text: Some("#".into()),
        dup_period: false,
    })
}

fn r_dolsign2(s: &[char], pos: usize) -> Option<Match> {
    let t = match at(s, pos)? {
        '\u{A2}' => "cents",
        '\u{A3}' => "#",
        '\u{80}' | '\u{20AC}' => "$",
        c @ ('\u{A4}' | '\u{A5}' | '\u{20A0}' | '\u{60B}' | '\u{E3F}' | '\u{20A4}' | '\u{FFE0}'
        | '\u{FFE1}' | '\u{FFE5}' | '\u{FFE6}') => return m(1, 1, c.to_string()),
        _ => return None,
    };
    m(1, 1, t)
}

/// Abbreviations kept with their period.
const ABBREV1: &[&str] = &[
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "mon",
    "tue", "tues", "wed", "thu", "thurs", "fri", "ala", "ariz", "calif", "colo", "conn", "ct",
    "dak", "fla", "ga", "ind", "kan", "kans", "ky", "md", "mich", "minn", "mo", "mont", "neb",
    "nev", "okla", "penn", "tenn", "va", "vt", "wis", "wisc", "wyo", "inc", "co", "cos", "corp",
    "pty", "ptys", "pte", "ptes", "ltd", "plc", "bancorp", "dept", "bhd", "assn", "univ", "intl",
    "sys", "tel", "est", "ext", "sq", "jr", "sr", "bros", "ed.d", "ph.d", "blvd", "rd", "esq",
    "etc", "al", "seq",
];
/// Capitalised-only members of the abbreviation lists (`[A]z`, `[I]ll`, `[M]iss`, ...).
const ABBREV_CAP: &[&str] = &[
    "Az", "Ark", "Del", "Ill", "La", "Mass", "Miss", "Ore", "Pa", "Tex", "Wash",
];
const ABBREV2: &[&str] = &[
    "mr", "mrs", "ms", "dr", "drs", "prof", "profs", "sen", "sens", "rep", "reps", "atty", "attys",
    "lt", "col", "gen", "messrs", "gov", "govs", "adm", "rev", "maj", "sgt", "cpl", "pvt", "capt",
    "st", "ste", "ave", "pres", "lieut", "hon", "brig", "cmdr", "comdr", "pfc", "spc", "supt",
    "supts", "det", "mt", "ft", "adj", "adv", "asst", "assoc", "ens", "insp", "mlle", "mme",
    "msgr", "sfc", "vs", "alex", "wm", "jos", "cie", "a.k.a", "cf", "treas", "ph", "invt", "elec",
    "natl", "mfg", "mtg",
];
const ABBREV3: &[&str] = &[
    "ca", "fig", "figs", "prop", "no", "nos", "art", "bldg", "pp", "op",
];

/// Capitalised words after which an acronym ending in "." ends a sentence (probed on the jar).
const SENTENCE_STARTS: &[&str] = &[
    "the", "a", "an", "he", "she", "it", "they", "we", "in", "at", "but", "if", "this", "that",
    "there", "these", "her", "our", "when", "what", "so", "yet", "as", "after", "one", "their",
    "some", "many", "you", "however", "then", "now", "last",
];

fn r_abbrev(s: &[char], pos: usize) -> Option<Match> {
    // (length, kind): kind 1 = ABBREV1 (sentence end: space/newline then space/newline/upper case),
    // 2 = multi-letter acronym (sentence end: white space then upper case), 0 = never
    let mut best = (0usize, 0u8);
    let mut consider = |lit: &str, need_digit_after: bool, case_exact: bool, kind: u8| {
        let k = lit.chars().count();
        let ok = if case_exact {
            s.len() >= pos + k && text(s, pos, k) == lit
        } else {
            eq_ic(s, pos, lit)
        };
        if ok && at(s, pos + k) == Some('.') {
            if need_digit_after {
                let sp =
                    usize::from(at(s, pos + k + 1).is_some_and(|c| is_space(c) || is_newline(c)));
                if !at(s, pos + k + 1 + sp).is_some_and(is_digit) {
                    return;
                }
            }
            if k + 1 > best.0 {
                best = (k + 1, kind);
            }
        }
    };
    for a in ABBREV1 {
        consider(a, false, false, 1);
    }
    for a in ABBREV2 {
        consider(a, false, false, 0);
    }
    for a in ABBREV_CAP {
        consider(a, false, true, 1);
    }
    consider("v", false, true, 0);
    for a in ABBREV3 {
        consider(a, true, false, 0);
    }
    // ACRONYM = [A-Za-z](\.[A-Za-z])*\.  (a single letter with a period is kept whole too)
    if at(s, pos).is_some_and(|c| c.is_ascii_alphabetic()) {
        let mut i = pos + 1;
        while at(s, i) == Some('.') && at(s, i + 1).is_some_and(|c| c.is_ascii_alphabetic()) {
            i += 2;
        }
        if at(s, i) == Some('.') && i + 1 - pos > best.0 {
            best = (i + 1 - pos, if i > pos + 1 { 2 } else { 0 });
        }
    }
    let (n, kind) = best;
    if n == 0 {
        return None;
    }
    let spnl = |c: Option<char>| c.is_some_and(|c| is_space(c) || is_newline(c));
    let dup = match kind {
        1 => {
            spnl(at(s, pos + n))
                && (spnl(at(s, pos + n + 1)) || at(s, pos + n + 1).is_some_and(char::is_uppercase))
        }
        2 => {
            let w = run(s, pos + n, |c| is_space(c) || is_newline(c));
            let st = pos + n + w;
            w > 0
                && at(s, st).is_some_and(char::is_uppercase)
                && SENTENCE_STARTS.iter().any(|word| {
                    let k = word.len();
                    eq_ic(s, st, word) && !at(s, st + k).is_some_and(|c| c.is_ascii_alphabetic())
                })
        }
        _ => false,
    };
    // `{ABBREV1}/[^][^]`: the two characters of trailing context count for the longest match
    // ("etc.a" is "etc." "a", not the word "etc.a")
    let reach = if kind == 1 && pos + n + 2 <= s.len() {
        n + 2
    } else {
        n
    };
    Some(Match {
        reach,
        consume: n,
        text: Some(text(s, pos, n)),
        dup_period: dup,
    })
}

/// `"` before a letter, digit or `$` opens (``), otherwise closes ('').
fn r_dblquote(s: &[char], pos: usize) -> Option<Match> {
    let n = if at(s, pos) == Some('"') {
        1
    } else if eq_ic(s, pos, "&quot;") {
        6
    } else {
        return None;
    };
    let open = at(s, pos + n).is_some_and(|c| c.is_ascii_alphanumeric() || c == '$');
    if open {
        m(n + 1, n, "``")
    } else {
        m(n, n, "''")
    }
}

/// THING = ([dDoOlL]APOSETC alnum)? alnum+ (HYPHEN ([dDoOlL]APOSETC alnum)? alnum+)*
fn r_thing(s: &[char], pos: usize) -> Option<Match> {
    let part = |i: usize| -> usize {
        let mut j = i;
        if matches!(at(s, j), Some('d' | 'D' | 'o' | 'O' | 'l' | 'L'))
            && at(s, j + 1).is_some_and(is_apos_etc)
            && at(s, j + 2).is_some_and(is_alnum)
        {
            j += 2;
        }
        let a = run(s, j, is_alnum);
        if a == 0 {
            return 0;
        }
        j + a - i
    };
    let first = part(pos);
    if first == 0 {
        return None;
    }
    let mut j = pos + first;
    while at(s, j).is_some_and(is_hyphen) {
        let p = part(j + 1);
        if p == 0 {
            break;
        }
        j += 1 + p;
    }
    let n = j - pos;
    m(n, n, normalize_apos(&text(s, pos, n)).replace('\u{AD}', ""))
}

/// THINGA = [A-Z]+(([+&]|&amp;)[A-Z]+)+ (upper case only): AT&T.
fn r_thinga(s: &[char], pos: usize) -> Option<Match> {
    let up = |c: char| c.is_ascii_uppercase();
    let a = run(s, pos, up);
    if a == 0 {
        return None;
    }
    let mut j = pos + a;
    let mut best = 0;
    loop {
        let sep = if matches!(at(s, j), Some('+' | '&')) {
            if eq_ic(s, j, "&amp;") {
                5
            } else {
                1
            }
        } else {
            0
        };
        if sep == 0 {
            break;
        }
        let b = run(s, j + sep, up);
        if b == 0 {
            break;
        }
        j += sep + b;
        best = j - pos;
    }
    (best > 0).then(|| Match {
        reach: best,
        consume: best,
        text: Some(text(s, pos, best).replace("&amp;", "&")),
        dup_period: false,
    })
}

/// A contraction at the very end of the input (elsewhere it needs a non-letter after it).
fn r_redaux(s: &[char], pos: usize) -> Option<Match> {
    // 'Tis / 'Twas -> 't is / 't was
    if at(s, pos).is_some_and(is_apos)
        && matches!(at(s, pos + 1), Some('t' | 'T'))
        && (eq_ic(s, pos + 2, "is") || eq_ic(s, pos + 2, "was"))
    {
        return m(2, 2, normalize_apos(&text(s, pos, 2)));
    }
    let r = redaux_len(s, pos);
    (r > 0 && pos + r == s.len()).then(|| Match {
        reach: r,
        consume: r,
        text: Some(normalize_apos(&text(s, pos, r))),
        dup_period: false,
    })
}

/// QUOTES = APOS | [`\u2018-\u201F...]{1,2}, mapped to LaTeX quotes (all later removed).
fn r_quotes(s: &[char], pos: usize) -> Option<Match> {
    let q = |c: char| {
        matches!(c, '`' | '\u{2018}'..='\u{201F}' | '\u{82}' | '\u{84}' | '\u{91}'..='\u{94}'
            | '\u{2039}' | '\u{203A}' | '\u{AB}' | '\u{BB}')
    };
    let c0 = at(s, pos)?;
    let n = if is_apos(c0) {
        1
    } else if q(c0) {
        if at(s, pos + 1).is_some_and(q) {
            2
        } else {
            1
        }
    } else {
        return None;
    };
    let t: String = s[pos..pos + n].iter().collect();
    let opens = at(s, pos + n).is_some_and(|c| c.is_ascii_alphabetic());
    let out = match t.as_str() {
        "'" if opens => "`",
        "'" | "\u{92}" | "\u{2019}" | "\u{201B}" | "\u{2032}" => "'",
        "`" | "\u{91}" | "\u{2018}" | "\u{2039}" => "`",
        "\u{201C}" | "\u{93}" | "\u{84}" | "\u{201E}" | "\u{AB}" | "``" => "``",
        "\u{201D}" | "\u{94}" | "\u{BB}" => "''",
        "\u{203A}" => "'",
        _ => {
            if t.chars().all(|c| matches!(c, '`' | '\u{2018}' | '\u{91}')) {
                "``"
            } else if t.chars().all(|c| is_apos(c) || c == '\u{201B}') {
                "''"
            } else {
                t.as_str()
            }
        }
    };
    m(n, n, out.to_string())
}

fn r_lt_gt(s: &[char], pos: usize) -> Option<Match> {
    for (lit, out) in [
        ("<<", "<<"),
        (">>", ">>"),
        ("&lt;", "<"),
        ("&gt;", ">"),
        ("<", "<"),
        (">", ">"),
    ] {
        if eq_ic(s, pos, lit) {
            let k = lit.chars().count();
            return m(k, k, out);
        }
    }
    None
}

/// SMILEY = [<>]?[:;=][\-o\*']?[\(\)DPdpO\\{@\|\[\]] followed by a non-letter.
fn r_smiley(s: &[char], pos: usize) -> Option<Match> {
    let mut i = pos;
    if matches!(at(s, i), Some('<' | '>')) {
        i += 1;
    }
    if !matches!(at(s, i), Some(':' | ';' | '=')) {
        return None;
    }
    i += 1;
    let try_end = |j: usize| -> Option<usize> {
        matches!(
            at(s, j),
            Some('(' | ')' | 'D' | 'P' | 'd' | 'p' | 'O' | '\\' | '{' | '@' | '|' | '[' | ']')
        )
        .then_some(j + 1)
    };
    let end = if matches!(at(s, i), Some('-' | 'o' | '*' | '\'')) {
        try_end(i + 1).or_else(|| try_end(i))
    } else {
        try_end(i)
    }?;
    if at(s, end).is_some_and(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let n = end - pos;
    let t = text(s, pos, n).replace('(', "-LRB-").replace(')', "-RRB-");
    m(n, n, t)
}

fn r_brackets(s: &[char], pos: usize) -> Option<Match> {
    let t = match at(s, pos)? {
        '(' => "-LRB-",
        ')' => "-RRB-",
        '[' => "-LSB-",
        ']' => "-RSB-",
        '{' => "-LCB-",
        '}' => "-RCB-",
        _ => return None,
    };
    m(1, 1, t)
}

fn r_hyphens(s: &[char], pos: usize) -> Option<Match> {
    let n = run(s, pos, |c| c == '-');
    if n == 0 {
        return None;
    }
    m(n, n, if n == 1 { "-" } else { "--" })
}

fn r_ldots(s: &[char], pos: usize) -> Option<Match> {
    if matches!(at(s, pos), Some('\u{85}' | '\u{2026}')) {
        return m(1, 1, "...");
    }
    let n = run(s, pos, |c| c == '.');
    if n >= 3 {
        return m(n, n, "...");
    }
    // SPACEDLDOTS = \.[ \u00A0]\.[ \u00A0]\.
    let sp = |c: Option<char>| matches!(c, Some(' ' | '\u{A0}'));
    if at(s, pos) == Some('.')
        && sp(at(s, pos + 1))
        && at(s, pos + 2) == Some('.')
        && sp(at(s, pos + 3))
        && at(s, pos + 4) == Some('.')
    {
        return m(5, 5, "...");
    }
    None
}

fn r_fnmarks(s: &[char], pos: usize) -> Option<Match> {
    for c in ['@', '#', '_'] {
        let n = run(s, pos, |x| x == c);
        if n > 0 {
            return m(n, n, text(s, pos, n));
        }
    }
    None
}

fn r_asts(s: &[char], pos: usize) -> Option<Match> {
    let n = run(s, pos, |c| c == '*');
    (n > 0).then(|| Match {
        reach: n,
        consume: n,
        text: Some(text(s, pos, n)),
        dup_period: false,
    })
}

fn r_insentp(s: &[char], pos: usize) -> Option<Match> {
    matches!(at(s, pos)?, ',' | ';' | ':' | '\u{3001}').then(|| Match {
        reach: 1,
        consume: 1,
        text: Some(text(s, pos, 1)),
        dup_period: false,
    })
}

fn r_bang(s: &[char], pos: usize) -> Option<Match> {
    let n = run(s, pos, |c| c == '?' || c == '!');
    (n > 0).then(|| Match {
        reach: n,
        consume: n,
        text: Some(text(s, pos, n)),
        dup_period: false,
    })
}

fn r_period(s: &[char], pos: usize) -> Option<Match> {
    matches!(
        at(s, pos)?,
        '.' | '\u{A1}' | '\u{BF}' | '\u{37E}' | '\u{589}' | '\u{61F}' | '\u{6D4}' | '\u{700}'
            ..='\u{702}' | '\u{7FA}' | '\u{3002}'
    )
    .then(|| Match {
        reach: 1,
        consume: 1,
        text: Some(text(s, pos, 1)),
        dup_period: false,
    })
}

fn r_equals_slash(s: &[char], pos: usize) -> Option<Match> {
    matches!(at(s, pos)?, '=' | '/').then(|| Match {
        reach: 1,
        consume: 1,
        text: Some(text(s, pos, 1)),
        dup_period: false,
    })
}

/// HTHING = [alnum][A-Za-z0-9.,\u00AD]*(-([A-Za-z0-9\u00AD]+|ACRO2\.))+ : 1,000-piece, u.s.-based.
fn r_hthing(s: &[char], pos: usize) -> Option<Match> {
    if !at(s, pos).is_some_and(is_alnum) {
        return None;
    }
    let body = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == ',' || c == '\u{AD}';
    let b = run(s, pos + 1, body);
    // backtrack over the greedy body: the longest overall match wins
    let mut best = 0;
    for head in (pos + 1..=pos + 1 + b).rev() {
        if at(s, head) != Some('-') {
            continue;
        }
        let mut j = head;
        let mut parts = 0;
        while at(s, j) == Some('-') {
            let a = run(s, j + 1, |c| c.is_ascii_alphanumeric() || c == '\u{AD}');
            // ACRO2 followed by '.', e.g. "-U.S."
            let mut acro = 0;
            if at(s, j + 1).is_some_and(|c| c.is_ascii_alphabetic()) {
                let mut i = j + 2;
                while at(s, i) == Some('.') && at(s, i + 1).is_some_and(|c| c.is_ascii_alphabetic())
                {
                    i += 2;
                }
                if i > j + 2 && at(s, i) == Some('.') {
                    acro = i + 1 - (j + 1);
                }
            }
            let step = a.max(acro);
            if step == 0 {
                break;
            }
            j += 1 + step;
            parts += 1;
        }
        if parts > 0 {
            best = best.max(j - pos);
        }
    }
    (best > 0).then(|| Match {
        reach: best,
        consume: best,
        text: Some(text(s, pos, best).replace('\u{AD}', "")),
        dup_period: false,
    })
}

/// A word (or hyphenated word) whose period is followed by `,` `;` or `:` keeps the period
/// ("dog.," -> "dog." ","), as an abbreviation would.
fn r_word_period(s: &[char], pos: usize) -> Option<Match> {
    if !at(s, pos).is_some_and(is_letter) {
        return None;
    }
    let w = [r_word(s, pos), r_thing(s, pos), r_hthing(s, pos)]
        .into_iter()
        .flatten()
        .map(|m| m.consume)
        .max()?;
    (at(s, pos + w) == Some('.')
        && matches!(at(s, pos + w + 1), Some(',' | ';' | ':' | '\u{3001}')))
    .then(|| Match {
        reach: w + 2,
        consume: w + 1,
        text: Some(normalize_apos(&text(s, pos, w + 1)).replace('\u{AD}', "")),
        dup_period: false,
    })
}

/// Stand-alone symbols (MISCSYMBOL) and any other visible character the Java lexer knows
/// (U+0000-U+07FF, general punctuation, symbols): a one-character token.
fn r_misc(s: &[char], pos: usize) -> Option<Match> {
    let c = at(s, pos)?;
    if c.is_control() || c.is_whitespace() || is_letter(c) || is_digit(c) {
        return None;
    }
    m(1, 1, c.to_string())
}

fn r_space(s: &[char], pos: usize) -> Option<Match> {
    let c = at(s, pos)?;
    (is_space(c)
        || is_newline(c)
        || c.is_whitespace()
        || matches!(c, '\0' | '\u{200B}' | '\u{200E}' | '\u{200F}' | '\u{FEFF}'))
    .then_some(Match {
        reach: 1,
        consume: 1,
        text: None,
        dup_period: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> String {
        ptb_tokens(s).join(" ")
    }

    #[test]
    fn contractions_and_possessives() {
        assert_eq!(toks("A man's dog isn't happy"), "a man 's dog is n't happy");
        assert_eq!(toks("can't won't I'm"), "ca n't wo n't i 'm");
        assert_eq!(toks("the dogs' bowls"), "the dogs ' bowls");
        assert_eq!(toks("I cannot, gonna"), "i can not , gon na");
    }

    #[test]
    fn brackets_stay_lower_cased() {
        assert_eq!(
            tokenize_caption("A dog (brown)."),
            "a dog -lrb- brown -rrb-"
        );
    }
}
