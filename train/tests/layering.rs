//! The crate's layering ([`train::LAYERS`], documented in `src/lib.rs`) holds: every module of
//! the library uses (`crate::<module>`) only modules listed before it, the list names exactly
//! the modules `lib.rs` declares, and no library module uses the command line's types (clap)
//! or the binary's `cli` module. Test code (`tests.rs` files, `#[cfg(test)]` modules) may use
//! anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`.
fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("source folder")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The library code of a file: comments and `#[cfg(test)]` modules removed.
fn library_code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|n| n.trim_start().starts_with("mod ") && n.contains('{'))
        {
            // Skip the module up to its closing brace.
            let mut depth = 0i64;
            for l in lines.by_ref() {
                depth += l.matches('{').count() as i64 - l.matches('}').count() as i64;
                if depth <= 0 && l.contains('}') {
                    break;
                }
            }
            continue;
        }
        if t.starts_with("//") {
            continue;
        }
        let code = match t.find("//") {
            // A trailing comment (not inside a string: good enough for `use` lines).
            Some(i) if !t[..i].contains('"') => &t[..i],
            _ => t,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// The top-level modules named by `crate::<name>` paths (also inside `use crate::{a, b}`).
fn crate_modules(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.push(name);
                }
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
        rest = after;
    }
    found
}

/// The library files of each top-level module.
fn modules() -> BTreeMap<String, Vec<PathBuf>> {
    let mut files = Vec::new();
    rs_files(&src(), &mut files);
    let mut by_module: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src()).expect("under src");
        let first = rel
            .components()
            .next()
            .expect("a component")
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let name = f.file_name().expect("file name").to_string_lossy();
        let is_test = name == "tests.rs" || name == "test_util.rs";
        if matches!(first.as_str(), "lib" | "main" | "cli" | "test_util") || is_test {
            continue;
        }
        by_module.entry(first).or_default().push(f);
    }
    by_module
}

#[test]
fn the_layer_list_names_every_module_of_lib_rs() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("lib.rs");
    let mut declared: Vec<String> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect();
    declared.sort();
    let mut listed: Vec<String> = train::LAYERS.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(declared, listed, "lib.rs modules vs train::LAYERS");
    let on_disk: Vec<String> = modules().into_keys().collect();
    assert_eq!(on_disk, listed, "source files vs train::LAYERS");
}

#[test]
fn no_module_uses_one_above_it() {
    let rank = |m: &str| train::LAYERS.iter().position(|l| *l == m);
    let mut violations = Vec::new();
    let mut checked = 0;
    for (module, files) in modules() {
        let own = rank(&module).expect("listed");
        for f in files {
            let code = library_code(&std::fs::read_to_string(&f).expect("source"));
            for used in crate_modules(&code) {
                checked += 1;
                match rank(&used) {
                    Some(r) if r <= own => {}
                    Some(_) => violations.push(format!(
                        "{}: {module} uses crate::{used}, a module above it",
                        f.display()
                    )),
                    None => violations.push(format!(
                        "{}: crate::{used} is not a listed module",
                        f.display()
                    )),
                }
            }
            if code.contains("clap::") || code.contains("use clap") {
                violations.push(format!("{}: library code uses clap", f.display()));
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} crate paths found: is the parser broken?"
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_parser_sees_grouped_and_plain_paths_and_skips_comments_and_tests() {
    let code = library_code(
        "use crate::a::B;\n// use crate::c;\nuse crate::{d, e::F};\nlet x = crate::g::h(); // crate::i\n\
         #[cfg(test)]\nmod tests {\n    use crate::j;\n    fn f() { if x { y } }\n}\nuse crate::k;\n",
    );
    assert_eq!(crate_modules(&code), ["a", "d", "e", "g", "k"]);
}
