# nbgrader configuration of the sample PacketScript course (docs/classroom.md).
c = get_config()  # noqa: F821 (nbgrader provides it)

c.CourseDirectory.course_id = "packetscript"
# Solution regions sit inside Lua cells (`-- BEGIN SOLUTION` ... `-- END SOLUTION`): the stub
# that replaces them in the students' version must be Lua, and a valid function body.
c.ClearSolutions.code_stub = {"python": "return NF_ACCEPT  -- YOUR CODE HERE (replace this line)"}
# Live checks build a lab: give a cell time.
c.Execute.timeout = 180
