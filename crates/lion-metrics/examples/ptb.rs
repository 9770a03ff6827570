//! Tokenises stdin as `java ... PTBTokenizer -preserveLines -lowerCase` does (one output line per
//! input line, tokens before punctuation removal). For side-by-side checks against the jar:
//! `cargo run -p lion-metrics --example ptb < captions.txt`
use std::io::{Read, Write};

fn main() -> std::io::Result<()> {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text)?;
    let lines: Vec<&str> = text.split('\n').collect();
    let out = lion_metrics::ptb::ptb_tokenize_lines(&lines);
    let mut w = std::io::BufWriter::new(std::io::stdout().lock());
    for l in out {
        writeln!(w, "{}", l.join(" "))?;
    }
    Ok(())
}
