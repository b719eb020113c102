//! The shape the code keeps, checked on every test run: no function over 80 lines outside
//! tests and data tables, and no `Result<_, String>` in library code (errors are typed enums
//! that tell the operator what to fix; only `main.rs` turns them into text).
//!
//! The function length is counted from the `fn` line to its closing brace, skipping string and
//! character literals and comments; everything from a file's `#[cfg(test)]` on is a test.

use std::path::{Path, PathBuf};

use crate::common::root;

const MAX_FN_LINES: usize = 80;

/// Functions that are data tables, not logic: a long literal list reads best in one place.
const DATA_TABLES: &[&str] = &[];

fn sources() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root().join("src")];
    for c in std::fs::read_dir(root().join("crates")).unwrap() {
        dirs.push(c.unwrap().path().join("src"));
    }
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The code of a line without comments and with literals emptied, so braces in them don't count.
fn code_of(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => break,
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
                out.push_str("\"\"");
            }
            '\'' => {
                // a char literal ('x', '\n', '{'), or a lifetime ('a): skip only the former
                let rest: String = chars.clone().take(3).collect();
                let len = if rest.starts_with('\\') {
                    rest.find('\'').map(|i| i + 1)
                } else if rest.chars().nth(1) == Some('\'') {
                    Some(2)
                } else {
                    None
                };
                if let Some(n) = len {
                    for _ in 0..n {
                        chars.next();
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

fn fn_name(code: &str) -> Option<&str> {
    let t = code.trim_start();
    let at = t.find("fn ")?;
    let before = &t[..at];
    let ok = before
        .split_whitespace()
        .all(|w| ["pub", "pub(crate)", "pub(super)", "const", "async", "unsafe", "extern"].contains(&w));
    if !ok {
        return None;
    }
    let rest = &t[at + 3..];
    let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_'))?;
    Some(&rest[..end])
}

/// (name, first line, length) of every function over the limit in one file.
fn long_functions(path: &Path) -> Vec<(String, usize, usize)> {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().take_while(|l| l.trim() != "#[cfg(test)]").collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let code = code_of(lines[i]);
        let Some(name) = fn_name(&code) else {
            i += 1;
            continue;
        };
        let (mut depth, mut opened, mut j) = (0i32, false, i);
        while j < lines.len() {
            let c = code_of(lines[j]);
            for ch in c.chars() {
                match ch {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if (opened && depth == 0) || (!opened && c.trim_end().ends_with(';')) {
                break;
            }
            j += 1;
        }
        let len = j - i + 1;
        if opened && len > MAX_FN_LINES && !DATA_TABLES.contains(&name) {
            out.push((name.to_string(), i + 1, len));
        }
        i = if opened { j + 1 } else { i + 1 };
    }
    out
}

#[test]
fn no_function_is_over_80_lines_outside_tests() {
    let mut long = Vec::new();
    for p in sources() {
        for (name, line, len) in long_functions(&p) {
            let rel = p.strip_prefix(root()).unwrap().display().to_string();
            long.push(format!("{rel}:{line} fn {name}: {len} lines"));
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines:\n{}",
        long.join("\n")
    );
}

/// Whether the line names a `Result` whose error type is `String`.
fn string_errors(code: &str) -> bool {
    code.match_indices("Result<").any(|(at, m)| {
        let (mut depth, mut args, mut arg) = (1, Vec::new(), String::new());
        for c in code[at + m.len()..].chars() {
            match c {
                '<' | '(' => depth += 1,
                '>' | ')' => depth -= 1,
                ',' if depth == 1 => {
                    args.push(std::mem::take(&mut arg));
                    continue;
                }
                _ => {}
            }
            if depth == 0 {
                args.push(arg);
                break;
            }
            arg.push(c);
        }
        args.len() == 2 && args[1].trim() == "String"
    })
}

#[test]
fn library_code_returns_typed_errors() {
    let mut found = Vec::new();
    for p in sources() {
        if p.ends_with("src/main.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        for (n, l) in text.lines().take_while(|l| l.trim() != "#[cfg(test)]").enumerate() {
            if string_errors(&code_of(l)) {
                let rel = p.strip_prefix(root()).unwrap().display().to_string();
                found.push(format!("{rel}:{}: {}", n + 1, l.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "Result<_, String> in library code:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_checker_sees_a_long_function_and_a_string_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.rs");
    let body: String = (0..90).map(|i| format!("    let _x{i} = \"}}\";\n")).collect();
    std::fs::write(
        &p,
        format!("pub fn long() -> Result<(), String> {{\n{body}    Ok(())\n}}\n"),
    )
    .unwrap();
    assert_eq!(long_functions(&p), vec![("long".to_string(), 1, 93)]);
    assert_eq!(code_of("let c = '{'; // }"), "let c = ; ");
    assert!(string_errors("fn f() -> Result<Vec<(u8, i8)>, String> {"));
    assert!(!string_errors(
        "fn f(m: BTreeMap<String, String>) -> Result<String, E> {"
    ));
}
