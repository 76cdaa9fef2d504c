-- notebook.lua: turn a notebook, as pandoc's ipynb reader sees it, into book content.
--
-- Pandoc reads each chapter with `--ipynb-output=all`, so every code cell arrives as
--   Div.cell.code [ CodeBlock(source), Div.output [...], Div.output [...] ]
-- and every output carries all of its representations. This filter
--   * reads the `#|` directives of a code cell and strips them from the code shown;
--   * drops hidden cells (`#| hide`, `#| default_exp`, `#| include: false`), the code of
--     `#| echo: false` cells and the outputs of `#| output: false` cells;
--   * keeps the richest representation of each output (markdown, image, then plain text);
--   * turns an image output into a numbered figure (`#| fig-cap`, `#| label: fig-...`) and a
--     table output into a numbered table (`#| tbl-cap`, `#| label: tbl-...`); an image or a
--     table output without a caption is an error, so every figure and table has one;
--   * gives display equations their label (`$$ ... $$ {#eq-x}`), makes `[@sec-x]`,
--     `[@fig-x]`, `[@tbl-x]` and `[@eq-x]` cross-references, and leaves other keys to the
--     bibliography;
--   * drops automatic heading ids (every chapter has a "Summary"); only `{#sec-...}` stay;
--   * prints a check cell (`#| check: cached = uncached for 5 model types`) as its one-line
--     summary in a small box (`checked` in template.typ), not its code: the asserts run in
--     the notebook (nbdev-test), the reader gets the claim they back. A check cell prints
--     nothing (book/build.py refuses one with an output), so there is no output to drop.
--   * prints a plumbing cell (`#| plumbing: refuses a corpus that would be empty`) as one line
--     naming what it defines, with its summary (`plumbing` in template.typ), and lists it in the
--     Engineering notes appendix; its code is in the package and the notebook.
--   * moves the code of a fold cell (`#| fold: how GPTConfig refuses an impossible shape`) to a
--     last section of the chapter, "Listings in full", and prints in its place one line with
--     the summary and the page of the listing (`folded` in template.typ); its outputs stay.
--     For code a reader needs to run but not to read on first pass (validation, plumbing).

local CROSSREF = { "sec-", "fig-", "tbl-", "eq-" }

local function is_crossref(key)
  for _, prefix in ipairs(CROSSREF) do
    if key:sub(1, #prefix) == prefix then return true end
  end
  return false
end

-- Split a cell's source into its `#|` directives and the code a reader sees.
local function directives(source)
  local opts, lines = {}, {}
  for line in (source .. "\n"):gmatch("(.-)\n") do
    local d = line:match("^#|%s*(.-)%s*$")
    if d then
      local key, value = d:match("^([%w_-]+)%s*:%s*(.*)$")
      if key then
        opts[key] = value:gsub('^"(.*)"$', "%1"):gsub("^'(.*)'$", "%1")
      else
        local flag = d:match("^([%w_-]+)")
        if flag then opts[flag] = true end
      end
    else
      table.insert(lines, line)
    end
  end
  local code = table.concat(lines, "\n"):gsub("^%s*\n", ""):gsub("%s+$", "")
  return opts, code
end

local function strip_ansi(s)
  return (s:gsub("\27%[[%d;]*[A-Za-z]", ""))
end

-- Other control characters (a byte-level model can sample one) have no glyph in any font:
-- print them escaped, as Python's repr does (\x1d).
local function escape_controls(s)
  return (s:gsub("[%z\1-\8\11-\31\127]", function(c) return string.format("\\x%02x", c:byte()) end))
end

-- The blocks of one output Div, keeping only its richest representation.
local function render_output(div)
  local rich, plain = {}, {}
  for _, b in ipairs(div.content) do
    if b.t == "RawBlock" and b.format == "markdown" then
      for _, parsed in ipairs(pandoc.read(b.text, "markdown").blocks) do
        table.insert(rich, parsed)
      end
    elseif b.t == "Para" and #b.content == 1 and b.content[1].t == "Image" then
      table.insert(rich, b)
    elseif b.t == "CodeBlock" then
      local text = escape_controls(strip_ansi(b.text)):gsub("%s+$", "")
      if text ~= "" then table.insert(plain, pandoc.CodeBlock(text, { class = "output" })) end
    end
    -- other raw formats (html, latex) have no place in the PDF
  end
  if #rich > 0 then return rich end
  return plain
end

-- Typst reads an apostrophe after a digit as a prime (5'11"): "GPT-4's" would print
-- "GPT-4′s". After a digit and before a letter it is an apostrophe, so it is written as one.
local function apostrophe_after_digit(el)
  local rest = el.text:gsub("(%d)\u{2019}(%a)", "%1'%2")
  if not rest:find("%d'%a") then return nil end
  local parts = {}
  while true do
    local at = rest:find("%d'%a")
    if not at then break end
    table.insert(parts, pandoc.Str(rest:sub(1, at)))
    table.insert(parts, pandoc.RawInline("typst", "\u{2019}"))  -- literal: no smart quote
    rest = rest:sub(at + 2)
  end
  if rest ~= "" then table.insert(parts, pandoc.Str(rest)) end
  return parts
end

-- A caption or a one-line summary, as inlines; summaries are written to Typst at once, so
-- they get the apostrophe fix here rather than from the filter's later pass.
local function parse_caption(text)
  local blocks = pandoc.read(text, "markdown").blocks
  if #blocks == 0 then return pandoc.Inlines {} end
  return pandoc.Inlines(blocks[1].content):walk { Str = apostrophe_after_digit }
end

local function cell_error(source, message)
  local first = source:match("^[^\n]*") or ""
  error(message .. " (in the cell that starts: " .. first .. ")", 0)
end

-- A check cell: its summary, in the template's `checked` box, in place of its code.
local function check_cell(source, summary, el)
  if summary == true or summary == "" then
    cell_error(source.text, "a check cell needs its summary: `#| check: what the asserts show`")
  end
  for i = 2, #el.content do
    if el.content[i].t == "Div" and el.content[i].classes:includes("output") then
      cell_error(source.text, "a check cell prints nothing: move what it prints to a cell of its own")
    end
  end
  local typ = pandoc.write(pandoc.Pandoc { pandoc.Plain(parse_caption(summary)) }, "typst"):gsub("%s+$", "")
  return { pandoc.RawBlock("typst", '#import "template.typ": checked\n#checked[' .. typ .. "]") }
end

-- The chapter's folded listings, in order: { label, summary (Typst), code }.
local folded = {}

-- A fold cell's code goes to the end of the chapter; in its place, the summary and a page.
local function fold_code(source, summary, code)
  if summary == true or summary == "" then
    cell_error(source.text, "a fold cell needs its summary: `#| fold: what the folded code does`")
  end
  local typ = pandoc.write(pandoc.Pandoc { pandoc.Plain(parse_caption(summary)) }, "typst"):gsub("%s+$", "")
  local label = "fold-" .. pandoc.utils.sha1(code):sub(1, 12)
  table.insert(folded, { label = label, summary = typ, code = code })
  return pandoc.RawBlock("typst", '#import "template.typ": folded\n#folded(<' .. label .. '>)[' .. typ .. "]")
end

-- A plumbing cell (package code that protects rather than teaches): in its place one line
-- with the names it defines, their module and what they guard against; the `plumbing` box
-- also records them for the Engineering notes appendix. book/build.py adds the names and the
-- module (`#| plumbing-names:`, `#| plumbing-module:`) and refuses a cell that is not exported.
local function plumbing_cell(source, opts)
  if opts.plumbing == true or opts.plumbing == "" then
    cell_error(source.text, "a plumbing cell needs its summary: `#| plumbing: what it guards against`")
  end
  local names = {}
  for name in (opts["plumbing-names"] or ""):gmatch("[^;]+") do   -- `x; y`, `json, os; from a: b`
    name = name:gsub("^%s+", ""):gsub("%s+$", ""):gsub('"', "")
    if name ~= "" then table.insert(names, '"' .. name .. '"') end
  end
  local module = (opts["plumbing-module"] or ""):gsub('"', "")
  local kind = opts["plumbing-kind"] == "imports" and "imports" or "code"
  local typ = pandoc.write(pandoc.Pandoc { pandoc.Plain(parse_caption(opts.plumbing)) }, "typst"):gsub("%s+$", "")
  return { pandoc.RawBlock("typst", '#import "template.typ": plumbing\n#plumbing(('
    .. table.concat(names, ", ") .. ',), "' .. module .. '", kind: "' .. kind .. '")[' .. typ .. "]") }
end

local function code_cell(el)
  local source = el.content[1]
  if source == nil or source.t ~= "CodeBlock" then return nil end
  local opts, code = directives(source.text)
  if opts.hide or opts.default_exp or opts.include == "false" then return {} end
  if opts.check then return check_cell(source, opts.check, el) end
  if opts.plumbing then return plumbing_cell(source, opts) end

  local blocks = pandoc.Blocks {}
  if opts.fold and opts.echo ~= "false" and code ~= "" then
    blocks:insert(fold_code(source, opts.fold, code))
  elseif opts.echo ~= "false" and code ~= "" then
    blocks:insert(pandoc.CodeBlock(code, { class = "python" }))
  end
  if opts.output == "false" then return blocks end

  local label = opts.label or ""
  for i = 2, #el.content do
    local out = el.content[i]
    if out.t == "Div" and out.classes:includes("output") then
      for _, b in ipairs(render_output(out)) do
        if b.t == "Para" and b.content[1].t == "Image" then
          if not opts["fig-cap"] then
            cell_error(source.text, "a figure output needs `#| fig-cap: ...` (and `#| label: fig-...` to refer to it)")
          end
          local img = b.content[1]
          b = pandoc.Figure(pandoc.Plain { img }, { pandoc.Plain(parse_caption(opts["fig-cap"])) },
            { id = label:match("^fig%-") and label or "" })
          opts["fig-cap"] = nil -- one caption, one figure
        elseif b.t == "Table" then
          if not opts["tbl-cap"] then
            cell_error(source.text, "a table output needs `#| tbl-cap: ...` (and `#| label: tbl-...` to refer to it)")
          end
          b.caption = { long = { pandoc.Plain(parse_caption(opts["tbl-cap"])) } }
          if label:match("^tbl%-") then b.identifier = label end
          opts["tbl-cap"] = nil
        end
        blocks:insert(b)
      end
    end
  end
  return blocks
end

-- `$$ ... $$ {#eq-x}` arrives as a paragraph: DisplayMath, a space, Str "{#eq-x}".
local function labelled_equations(para)
  local out, inlines, changed = pandoc.Blocks {}, pandoc.Inlines {}, false
  local items = para.content
  local i = 1
  while i <= #items do
    local item = items[i]
    if item.t == "Math" and item.mathtype == "DisplayMath" then
      local j = i + 1
      while items[j] and (items[j].t == "Space" or items[j].t == "SoftBreak") do j = j + 1 end
      local label = items[j] and items[j].t == "Str" and items[j].text:match("^{#(eq%-[%w_-]+)}$")
      if label then
        if #inlines > 0 then out:insert(pandoc.Para(inlines)); inlines = pandoc.Inlines {} end
        local typ = pandoc.write(pandoc.Pandoc { pandoc.Plain { item } }, "typst"):gsub("%s+$", "")
        out:insert(pandoc.RawBlock("typst", typ .. " <" .. label .. ">"))
        changed = true
        i = j + 1
      else
        inlines:insert(item)
        i = i + 1
      end
    else
      inlines:insert(item)
      i = i + 1
    end
  end
  if not changed then return nil end
  -- drop leading spaces of a trailing paragraph
  while #inlines > 0 and (inlines[1].t == "Space" or inlines[1].t == "SoftBreak") do inlines:remove(1) end
  if #inlines > 0 then out:insert(pandoc.Para(inlines)) end
  return out
end

local function cite(el)
  local refs = pandoc.Inlines {}
  for i, c in ipairs(el.citations) do
    if i > 1 then refs:insert(pandoc.Str(", ")) end
    if is_crossref(c.id) then
      refs:insert(pandoc.RawInline("typst", "@" .. c.id))
    elseif c.mode == "AuthorInText" then
      -- `@key found that`: the work is the sentence's subject, so name its authors
      -- ("Lee et al. [20] found"), never a bare number
      refs:insert(pandoc.RawInline("typst", '#cite(<' .. c.id .. '>, form: "prose")'))
    else
      refs:insert(pandoc.RawInline("typst", "#cite(<" .. c.id .. ">)"))
    end
  end
  return refs
end

-- Let Typst size table columns to their content: pandoc's relative widths (from the length
-- of a pipe table's dashes) wrap short cells.
local function auto_width_table(tbl)
  for i, spec in ipairs(tbl.colspecs) do tbl.colspecs[i] = { spec[1], nil } end
  return tbl
end

-- "Chapter [@sec-data]": the template already writes "Chapter 1" for a reference to a
-- chapter (and "Section 1.2" for a section), so drop the word typed before the reference.
local SPELLED = { Chapter = true, Chapters = true, Appendix = true, Section = true, Sections = true }

local function drop_spelled_word(inlines)
  local i = 1
  while i <= #inlines - 2 do
    local word, gap, ref = inlines[i], inlines[i + 1], inlines[i + 2]
    local open, name = "", nil
    if word.t == "Str" then open, name = word.text:match("^(%(?)(%a+)$") end
    if name and SPELLED[name] and (gap.t == "Space" or gap.t == "SoftBreak")
        and ref.t == "Cite" and ref.citations[1].id:match("^sec%-") then
      inlines:remove(i); inlines:remove(i)
      if open ~= "" then inlines:insert(i, pandoc.Str(open)); i = i + 1 end
    end
    i = i + 1
  end
  return inlines
end

-- Inline code: a token such as `<|endoftext|>` must not break over two lines, so the code
-- that holds one is boxed. (No zero-width spaces to let long names break: Typst would map
-- them into the font's text of `_` and `.`, and copied code would carry them everywhere.)
local function inline_code(el)
  if el.text:match("<|[^|%s]+|>") then
    local quoted = el.text:gsub("\\", "\\\\"):gsub('"', '\\"')
    return pandoc.RawInline("typst", '#box(raw("' .. quoted .. '"))')
  end
end

-- Pandoc autolinks a bare `name@word` as an e-mail address: `pass@k` is a metric, not an
-- address. Only a domain with a dot is one.
local function not_an_email(el)
  local address = el.target:match("^mailto:(.*)$")
  if address and not address:match("@.+%..+") then return el.content end
end

-- "[@fig-pipeline]'s": the reference prints "Figure 1", so the apostrophe that follows it
-- comes after a digit as well, and would print as a prime.
local function apostrophe_after_ref(inlines)
  for i = 1, #inlines - 1 do
    local ref, next = inlines[i], inlines[i + 1]
    if ref.t == "Cite" and next.t == "Str" then
      local rest = next.text:match("^'(.*)$") or next.text:match("^\u{2019}(.*)$")
      if rest then
        inlines[i + 1] = pandoc.Str(rest)
        inlines:insert(i + 1, pandoc.RawInline("typst", "\u{2019}"))
      end
    end
  end
  return inlines
end

local function header(el)
  if not el.identifier:match("^sec%-") then el.identifier = "" end
  return el
end

-- `[0.310]{.out}`: a number the prose repeats from an output (build.py checks it); plain text.
-- `[[@key]]{.full-cite}`: the whole reference in the text, then a line break (further reading).
local function out_span(el)
  if el.classes:includes("out") then return el.content end
  if el.classes:includes("full-cite") then
    local refs = pandoc.Inlines {}
    for _, c in ipairs(el.content) do
      if c.t == "Cite" then
        for _, k in ipairs(c.citations) do
          refs:insert(pandoc.RawInline("typst", '#cite(<' .. k.id .. '>, form: "full")'))
        end
      end
    end
    refs:insert(pandoc.LineBreak()) -- what the entry is good for goes on the next line
    return refs
  end
end

-- The index: book/index.txt lists the main terms ("term | alias | ..."). The first mention of
-- each term in every section of body text (paragraphs, lists, tables, captions; never code or
-- headings) gets `#metadata("term")<index-term>`, and a mention in bold (where the text
-- defines the term) `#metadata("term")<index-main>`; template.typ collects both with page
-- numbers. A spelling with a capital after its first letter (ZeRO, GPipe, BPE) matches only
-- as written, so "ZeRO" is not "zero"; other spellings match in any case.
local function index_terms()
  local dir = PANDOC_SCRIPT_FILE:match("^(.*)[/\\]") or "."
  local f = io.open(dir .. "/index.txt", "r")
  if not f then return {} end
  local terms = {}
  for line in f:lines() do
    if not line:match("^%s*#") and line:match("%S") then
      local names = {}
      for part in line:gmatch("[^|]+") do
        local name = part:gsub("^%s+", ""):gsub("%s+$", "")
        local exact = false
        for w in name:gmatch("%S+") do
          if w:sub(2):match("%u") then exact = true end
        end
        local words = { exact = exact }
        for w in (exact and name or name:lower()):gmatch("%S+") do table.insert(words, w) end
        if #words > 0 then table.insert(names, words) end
      end
      local main = line:match("^%s*([^|]-)%s*$") or line:match("^%s*(.-)%s*|")
      table.insert(terms, { main = main, names = names })
    end
  end
  f:close()
  return terms
end

local function norm(text, exact)
  local w = (exact and text or text:lower()):gsub("^[%(%[\"'“‘]+", ""):gsub("[%.,;:%)%]!%?\"'”’]+$", "")
  return (w:gsub("['’]s$", ""))
end

local function word_is(text, want, last, exact)
  local w = norm(text, exact)
  if w == want then return true end
  return last and (w == want .. "s" or w == want .. "es")
end

-- The index of the last word if `words` start at inlines[i], else nil.
local function match_at(inlines, i, words)
  local k = i
  for n, want in ipairs(words) do
    if n > 1 then
      local gap = inlines[k + 1]
      if not gap or (gap.t ~= "Space" and gap.t ~= "SoftBreak") then return nil end
      k = k + 2
    end
    local item = inlines[k]
    if not item or item.t ~= "Str" or not word_is(item.text, want, n == #words, words.exact) then return nil end
  end
  return k
end

local function typst_string(s)
  return '"' .. s:gsub("\\", "\\\\"):gsub('"', '\\"') .. '"'
end

local function mark_index(doc)
  local terms = index_terms()
  if #terms == 0 then return nil end
  local seen = {}
  -- Mark the terms of `inlines`: each not yet seen in this section, or (`main`) every one.
  local function marker(kind, main)
    return function(inlines)
      local i = 1
      while i <= #inlines do
        local item = inlines[i]
        if item.t == "Str" then
          for _, term in ipairs(terms) do
            if main or not seen[term.main] then
              for _, words in ipairs(term.names) do
                local last = match_at(inlines, i, words)
                if last then
                  seen[term.main] = true
                  inlines:insert(last + 1, pandoc.RawInline("typst",
                    "#metadata(" .. typst_string(term.main) .. ")<" .. kind .. ">"))
                  break
                end
              end
            end
          end
        end
        i = i + 1
      end
      return inlines
    end
  end
  local mark, mark_main = marker("index-term", false), marker("index-main", true)
  local blocks = pandoc.Blocks {}
  for _, b in ipairs(doc.blocks) do
    if b.t == "Header" and b.level <= 2 then seen = {} end
    if b.t ~= "Header" and b.t ~= "CodeBlock" and b.t ~= "RawBlock" then
      b = b:walk { Strong = function(el) el.content = mark_main(el.content); return el end }
      b = b:walk { Inlines = mark }
    end
    blocks:insert(b)
  end
  doc.blocks = blocks
  return doc
end

-- The last section of a chapter: the folded listings, each under its summary.
local function listings_in_full(doc)
  if #folded == 0 then return nil end
  doc.blocks:insert(pandoc.Header(2, "Listings in full"))
  doc.blocks:insert(pandoc.Para(pandoc.Inlines {
    pandoc.Str("Code that the chapter runs but left out of its text, in the order it runs; where it runs, a line gives its summary and this page.") }))
  for _, f in ipairs(folded) do
    doc.blocks:insert(pandoc.RawBlock("typst", '#import "template.typ": folded-title\n#folded-title['
      .. f.summary .. "] <" .. f.label .. ">"))
    doc.blocks:insert(pandoc.CodeBlock(f.code, { class = "python" }))
  end
  return doc
end

return {
  { Span = out_span },
  { Div = function(el)
      if el.classes:includes("cell") and el.classes:includes("code") then return code_cell(el) end
    end },
  { Inlines = function(inlines) return apostrophe_after_ref(drop_spelled_word(inlines)) end },
  { Div = function(el)
      if el.classes:includes("cell") then return el.content end -- unwrap markdown cells
    end,
    Para = labelled_equations,
    Cite = cite,
    Str = apostrophe_after_digit,
    Table = auto_width_table,
    Link = not_an_email,
    Code = inline_code,
    Header = header },
  { Pandoc = listings_in_full },
  { Pandoc = mark_index },
}
