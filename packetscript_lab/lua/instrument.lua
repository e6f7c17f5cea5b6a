-- Writes the step budget into a script's source, following the Lua grammar.
--
-- A real lexer (strings with every escape, long brackets, comments, numerals) finds the
-- places where a script can take unbounded steps, and a call to the budget's tick goes
-- there: after each `do` (every while/for body and plain block), after `repeat`, after a
-- function's parameter list, and before each `goto`. Before each `return`, and before the
-- `end` of a function that falls off its end, a second call notes the line, so a bad
-- verdict is reported where it was returned. Nothing is inserted across a line break: the
-- line numbers of errors stay those of the script.
--
-- The two calls go through locals of the chunk whose names appear nowhere in its source,
-- so the script can neither name, shadow nor replace them. The instrumented chunk, called
-- with (tick, ret), returns the script's own main function.

local sfind, ssub, sbyte, concat = string.find, string.sub, string.byte, table.concat

local KEYWORDS = {}
for w in string.gmatch("and break do else elseif end false for function if in local nil not or "
                       .. "repeat return then true until while", "%a+") do KEYWORDS[w] = true end

-- Tokens as {kind, text, start, stop, line}: kind is "name", "keyword", "op", "number",
-- "string" or "eof". Comments and white space are skipped (the source is re-emitted by
-- slicing, so they stay). `goto_keyword`: LuaJIT and 5.2+ treat goto as a keyword.
local function lex(src, goto_keyword)
  local tokens, i, n, line = {}, 1, #src, 1
  local function newlines(from, to)          -- lines counted as Lua does: \n, \r, \r\n, \n\r
    local j = from
    while j <= to do
      local c = sbyte(src, j)
      if c == 10 or c == 13 then
        local d = sbyte(src, j + 1)
        if (d == 10 or d == 13) and d ~= c and j + 1 <= to then j = j + 1 end
        line = line + 1
      end
      j = j + 1
    end
  end
  local function long_bracket(at)            -- at points to '[': returns the end, or nil
    local _, e, eq = sfind(src, "^%[(=*)%[", at)
    if not e then return nil end
    local _, ce = sfind(src, "]" .. eq .. "]", e + 1, true)
    if not ce then error("unfinished long string or comment", 0) end
    return ce
  end
  local function push(kind, text, s, e)
    tokens[#tokens + 1] = { kind, text, s, e, line }
  end
  while i <= n do
    local c = ssub(src, i, i)
    if sfind(c, "^%s") then
      local _, e = sfind(src, "^%s+", i)
      newlines(i, e)
      i = e + 1
    elseif c == "-" and ssub(src, i + 1, i + 1) == "-" then
      local e = ssub(src, i + 2, i + 2) == "[" and long_bracket(i + 2)
      if not e then e = (sfind(src, "[\r\n]", i + 2) or n + 1) - 1 end
      newlines(i, e)
      i = e + 1
    elseif c == "[" and sfind(src, "^%[=*%[", i) then
      local e = long_bracket(i)
      push("string", ssub(src, i, e), i, e)
      newlines(i, e)
      i = e + 1
    elseif c == '"' or c == "'" then
      local j, start_line = i + 1, line
      while true do
        local d = ssub(src, j, j)
        if d == "" or d == "\n" or d == "\r" then error("unfinished string", 0) end
        if d == c then break end
        if d == "\\" then
          local x = ssub(src, j + 1, j + 1)
          if x == "\n" or x == "\r" then       -- an escaped line break: \r\n counts once
            local y = ssub(src, j + 2, j + 2)
            newlines(j + 1, j + 1)
            j = j + 2
            if (y == "\n" or y == "\r") and y ~= x then j = j + 1 end
          elseif x == "z" then                 -- \z skips the white space that follows
            local _, e = sfind(src, "^%s*", j + 2)
            newlines(j + 2, e)
            j = e + 1
          else
            j = j + 2
          end
        else
          j = j + 1
        end
      end
      tokens[#tokens + 1] = { "string", ssub(src, i, j), i, j, start_line }
      i = j + 1
    elseif sfind(c, "^[%a_]") then
      local _, e = sfind(src, "^[%w_]+", i)
      local w = ssub(src, i, e)
      push((KEYWORDS[w] or (goto_keyword and w == "goto")) and "keyword" or "name", w, i, e)
      i = e + 1
    elseif sfind(c, "^%d") or (c == "." and sfind(src, "^%.%d", i)) then
      -- A numeral: digits, letters (hex, suffixes such as LL or i), dots, and a sign
      -- right after an exponent mark.
      local j = i
      while true do
        local d = ssub(src, j, j)
        if sfind(d, "^[%w_%.]") then
          j = j + 1
        elseif (d == "+" or d == "-") and sfind(ssub(src, j - 1, j - 1), "^[eEpP]") then
          j = j + 1
        else
          break
        end
      end
      push("number", ssub(src, i, j - 1), i, j - 1)
      i = j
    else
      local op = ssub(src, i, i + 2)
      if op ~= "..." then
        op = ssub(src, i, i + 1)
        if not (op == ".." or op == "==" or op == "~=" or op == "<=" or op == ">=" or op == "::"
                or op == "<<" or op == ">>" or op == "//") then
          op = c
        end
      end
      push("op", op, i, i + #op - 1)
      i = i + #op
    end
  end
  push("eof", "", n + 1, n)
  return tokens
end

-- A local name that is not any name token of the source.
local function fresh_name(tokens, base)
  local used = {}
  for _, t in ipairs(tokens) do
    if t[1] == "name" then used[t[2]] = true end
  end
  local name = base
  while used[name] do name = name .. "_" end
  return name
end

-- Returns the instrumented source, or nil and the lexer's message.
local function instrument(src, goto_keyword)
  local ok, tokens = pcall(lex, src, goto_keyword)
  if not ok then return nil, tokens end
  local TICK, RET = fresh_name(tokens, "__ps_tick"), fresh_name(tokens, "__ps_ret")
  local tick = " " .. TICK .. "(); "       -- the ';' keeps a following '(' from calling it
  local out, from = {}, 1
  local function emit_upto(pos, text)        -- copy the source up to pos, then text
    out[#out + 1] = ssub(src, from, pos)
    out[#out + 1] = text
    from = pos + 1
  end
  local blocks = {}                          -- open blocks: "function", "do", "if", "repeat"
  local params_open = false                  -- after `function`, before its ')'
  for k = 1, #tokens do
    local t = tokens[k]
    local kind, text = t[1], t[2]
    if kind == "keyword" then
      if text == "function" then
        blocks[#blocks + 1] = { "function" }
        params_open = true
      elseif text == "do" then
        blocks[#blocks + 1] = { "do" }
        emit_upto(t[4], tick)
      elseif text == "repeat" then
        blocks[#blocks + 1] = { "repeat" }
        emit_upto(t[4], tick)
      elseif text == "if" then
        blocks[#blocks + 1] = { "if" }
      elseif text == "end" or text == "until" then
        local b = table.remove(blocks)
        if b and b[1] == "function" and not b.returned then
          emit_upto(t[3] - 1, " " .. RET .. "(" .. t[5] .. "); ")
        end
      elseif text == "return" then
        local b = blocks[#blocks]
        if b and b[1] == "function" then b.returned = true end
        emit_upto(t[3] - 1, " " .. RET .. "(" .. t[5] .. "); ")
      elseif text == "goto" then
        emit_upto(t[3] - 1, tick)
      end
    elseif kind == "op" and text == ")" and params_open then
      params_open = false
      emit_upto(t[4], tick)
    end
  end
  out[#out + 1] = ssub(src, from)
  return "local " .. TICK .. ", " .. RET .. " = ...; return function(...) " .. concat(out) .. "\nend"
end

return { lex = lex, instrument = instrument }
