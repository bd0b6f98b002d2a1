//! The focus strip (`longdoc --focus-svg`): one rectangle per chunk and row, over the chunk's
//! token range, coloured relative to the row's largest share; bad rows are refused.

#[path = "../src/cli/focus_strip.rs"]
mod focus_strip;

use focus_strip::{FocusRow, write_svg};

fn rects(svg: &str) -> Vec<(i32, i32, i32, String)> {
    // (x, y, width, fill) of every <rect>, in document order.
    let attr = |tag: &str, name: &str| -> String {
        let key = format!(" {name}=\"");
        let at = tag.find(&key).unwrap_or_else(|| panic!("{name} in {tag}")) + key.len();
        tag[at..].split('"').next().unwrap().to_string()
    };
    svg.split("<rect")
        .skip(1)
        .map(|tag| {
            let tag = tag.split("/>").next().unwrap();
            (
                attr(tag, "x").parse().unwrap(),
                attr(tag, "y").parse().unwrap(),
                attr(tag, "width").parse().unwrap(),
                attr(tag, "fill").to_uppercase(),
            )
        })
        .collect()
}

#[test]
fn chunks_are_drawn_over_their_tokens_coloured_by_share() {
    let dir = std::env::temp_dir().join(format!("focusllm-strip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("strip.svg");
    let chunks = vec![0..512, 512..1024, 1024..1536, 1536..2048];
    let rows = vec![
        FocusRow {
            label: "whole answer".into(),
            shares: vec![0.1, 0.0, 2.0, 0.5],
        },
        FocusRow {
            label: "\" 8\"".into(),
            shares: vec![0.9, 0.05, 0.05, 0.0],
        },
    ];
    write_svg(&path, "test", &chunks, &rows).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    let drawn = rects(&svg);
    // The background, then one rectangle per (row, chunk).
    assert_eq!(drawn.len(), 1 + 2 * 4, "{svg}");
    let cells = &drawn[1..];
    // Equal chunks get equal widths, left to right without gaps.
    let widths: Vec<i32> = cells[..4].iter().map(|c| c.2).collect();
    assert!(
        widths.iter().all(|w| (w - widths[0]).abs() <= 1),
        "{widths:?}"
    );
    for pair in cells[..4].windows(2) {
        assert!((pair[1].0 - (pair[0].0 + pair[0].2)).abs() <= 1, "{pair:?}");
    }
    assert!(
        cells[4].1 > cells[0].1,
        "the second row lies below the first"
    );
    // In each row the largest share gets the colour map's top, a zero share its bottom.
    let top = &cells[2].3;
    let bottom = &cells[1].3;
    assert_ne!(top, bottom);
    assert_eq!(&cells[4].3, top, "row 2's largest share is chunk 0");
    assert_eq!(&cells[7].3, bottom, "row 2's chunk 3 has no share");
    assert!(svg.contains("whole answer") && svg.contains("2.00") && svg.contains("0.90"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_row_with_the_wrong_number_of_shares_is_refused() {
    let path = std::env::temp_dir().join("focusllm-strip-never-written.svg");
    let rows = vec![FocusRow {
        label: "x".into(),
        shares: vec![1.0],
    }];
    let err = write_svg(&path, "t", &[0..10, 10..20], &rows).unwrap_err();
    assert!(err.to_string().contains("1 shares for 2 chunks"), "{err}");
    assert!(!path.exists());
}
